"""Permission sets: what one connection may publish and subscribe to.

conat decides, nats-server enforces: the auth callout turns a :class:`Permissions`
into the ``pub``/``sub`` lists of a NATS user JWT with :meth:`Permissions.to_nats`, and clients use
:meth:`Permissions.can_publish` / :meth:`Permissions.can_subscribe` to fail fast with ``Forbidden``
instead of waiting for the server's asynchronous permission violation.

Representation (the one place conat departs from NATS's encoding):

=====================  ===========================  ==========================================
allow list             meaning                      emitted by ``to_nats()``
=====================  ===========================  ==========================================
``None``               unrestricted (minus deny)    ``allow: [">"]``, ``deny: <deny>``
``()`` (the default)   nothing at all               ``allow: []``, ``deny: [">"]``
``("a.>", ...)``       only these (minus deny)      ``allow: [...]``, ``deny: <deny>``
=====================  ===========================  ==========================================

In NATS an empty allow list means *unrestricted*, a classic way to grant everything by accident.
Here "nothing" is the default and is always emitted with an explicit ``deny: [">"]``; "everything"
has to be asked for with ``None`` and is emitted as an explicit ``allow: [">"]``, because an empty
allow list does not always mean "everything" either: when a user also has response permissions,
nats-server turns an empty publish allow list into "nothing" (``validateResponsePermissions``), so
an open grant sent as ``[]`` could not publish at all. No list is ever emitted empty on its own.
Deny always wins over allow.

Subscribe rule (stricter than nats-server, on purpose): ``can_subscribe(pattern)`` is true only if
*every* subject the pattern can match is allowed and none is denied, i.e. the pattern is covered by
the union of the allow patterns and collides with no deny pattern. nats-server instead accepts a
wildcard subscription that merely overlaps a deny pattern and then drops the denied messages at
delivery. conat refuses such a subscription up front: a subscription either gets everything it
asks for or is refused, which is easier to reason about than silent filtering. Every subscription
``can_subscribe`` allows is admitted by nats-server with exactly these lists and receives all its
matches (tests/subjects/test_live_nats.py checks this against a real server).

Caveat for policies (measured on nats-server 2.15): the server admits a subscription when its
pattern, *read as a literal subject*, matches an allow pattern, and does not re-check allow lists
at delivery. So a subscribe allow pattern ending in ``*`` (``a.*``) lets a client that bypasses
conat subscribe ``a.>`` and receive ``a.x.y``. Against untrusted clients, end subscribe allow
patterns with a literal token or with ``>``, never with ``*``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Final, TypeAlias, final

import msgspec

from ._grammar import InvalidSubject, is_valid_pattern, is_valid_subject, validate_pattern
from ._match import SubjectIndex, _collide, _covered

__all__ = ["NatsPermissions", "Permissions"]

NatsPermissions: TypeAlias = dict[str, dict[str, list[str]]]
"""``{"pub": {"allow": [...], "deny": [...]}, "sub": {...}}``, as in a NATS user JWT."""

_DECISION_CACHE_SIZE: Final = 1024


@final
class _Rule:
    """One direction (publish or subscribe) compiled for fast repeated checks.

    Decisions are memoized per string in a bounded dict (oldest entry evicted first), so a
    connection that keeps publishing to the same subjects pays one dict lookup per check.
    """

    __slots__ = ("_allow", "_allow_tokens", "_decisions", "_deny", "_deny_tokens")

    def __init__(self, allow: tuple[str, ...] | None, deny: tuple[str, ...]) -> None:
        self._allow: SubjectIndex[None] | None = None
        self._allow_tokens: list[tuple[str, ...]] | None = None
        if allow is not None:
            self._allow = SubjectIndex(cache_size=0)
            for pattern in allow:
                self._allow.add(pattern, None)
            self._allow_tokens = [tuple(p.split(".")) for p in allow]
        self._deny: SubjectIndex[None] = SubjectIndex(cache_size=0)
        for pattern in deny:
            self._deny.add(pattern, None)
        self._deny_tokens = [tuple(p.split(".")) for p in deny]
        self._decisions: dict[str, bool] = {}

    def _remember(self, key: str, decision: bool) -> bool:
        decisions = self._decisions
        if len(decisions) >= _DECISION_CACHE_SIZE:
            del decisions[next(iter(decisions))]
        decisions[key] = decision
        return decision

    def permits_subject(self, subject: str) -> bool:
        decision = self._decisions.get(subject)
        if decision is not None:
            return decision
        return self._remember(
            subject,
            is_valid_subject(subject)
            and (self._allow is None or self._allow.has_match(subject))
            and not self._deny.has_match(subject),
        )

    def permits_pattern(self, pattern: str) -> bool:
        decision = self._decisions.get(pattern)
        if decision is not None:
            return decision
        if not is_valid_pattern(pattern):
            return self._remember(pattern, False)
        tokens = tuple(pattern.split("."))
        return self._remember(
            pattern,
            (self._allow_tokens is None or _covered(tokens, self._allow_tokens))
            and not any(_collide(tokens, deny) for deny in self._deny_tokens),
        )


def _nats_side(allow: tuple[str, ...] | None, deny: tuple[str, ...]) -> dict[str, list[str]]:
    if allow is None:
        # explicit: with response permissions nats-server reads an empty allow list as "nothing"
        return {"allow": [">"], "deny": list(deny)}
    if not allow:
        return {"allow": [], "deny": [">"]}  # never emit an empty allow alone: NATS reads it as "all"
    return {"allow": list(allow), "deny": list(deny)}


def _patterns(field: str, value: object, nullable: bool) -> tuple[str, ...] | None:
    """Normalize one field to a tuple of validated patterns, naming the field on error."""
    if value is None and nullable:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        expected = "a tuple of patterns or None" if nullable else "a tuple of patterns"
        raise TypeError(f"{field} must be {expected}, got {value!r}")
    patterns = tuple(value)
    for pattern in patterns:
        try:
            validate_pattern(pattern)
        except InvalidSubject as exc:
            raise InvalidSubject(exc.subject, exc.reason, exc.token, exc.index, field) from None
    return patterns


@final
class Permissions(msgspec.Struct, frozen=True, kw_only=True, dict=True, forbid_unknown_fields=True):
    """Publish and subscribe allow/deny pattern lists for one connection (see the module docstring).

    Immutable and hashable; encodes with msgspec as its four fields (``None`` stays ``null``, so
    "unrestricted" and "nothing" survive a round trip). Any iterable of patterns is accepted and
    stored as a tuple; every pattern is validated at construction.

    Raises (at construction):
        InvalidSubject: a pattern is not valid; ``field`` names the list.
        TypeError: a field is not a collection of patterns (e.g. a bare string).
    """

    publish_allow: tuple[str, ...] | None = ()
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...] | None = ()
    subscribe_deny: tuple[str, ...] = ()

    # Compiled checkers, stored in the instance __dict__ (not msgspec fields: never encoded).
    _publish: ClassVar[_Rule]
    _subscribe: ClassVar[_Rule]

    def __post_init__(self) -> None:
        publish_allow = _patterns("publish_allow", self.publish_allow, True)
        publish_deny = _patterns("publish_deny", self.publish_deny, False) or ()
        subscribe_allow = _patterns("subscribe_allow", self.subscribe_allow, True)
        subscribe_deny = _patterns("subscribe_deny", self.subscribe_deny, False) or ()
        msgspec.structs.force_setattr(self, "publish_allow", publish_allow)
        msgspec.structs.force_setattr(self, "publish_deny", publish_deny)
        msgspec.structs.force_setattr(self, "subscribe_allow", subscribe_allow)
        msgspec.structs.force_setattr(self, "subscribe_deny", subscribe_deny)
        self.__dict__["_publish"] = _Rule(publish_allow, publish_deny)
        self.__dict__["_subscribe"] = _Rule(subscribe_allow, subscribe_deny)

    @classmethod
    def allow_all(cls) -> Permissions:
        """Publish and subscribe anything (what master's own connection gets)."""
        return cls(publish_allow=None, subscribe_allow=None)

    @classmethod
    def deny_all(cls) -> Permissions:
        """Publish and subscribe nothing (the default; handy as a starting point)."""
        return cls(publish_allow=(), subscribe_allow=())

    def can_publish(self, subject: str) -> bool:
        """Whether publishing to the literal ``subject`` is allowed.

        True iff ``subject`` is a valid literal subject, some allow pattern matches it (or publish
        is unrestricted) and no deny pattern matches it. Never raises: anything invalid, including
        a pattern, is simply not publishable. Memoized per subject; safe on the per-message path.
        """
        return self._publish.permits_subject(subject)

    def can_subscribe(self, pattern: str) -> bool:
        """Whether subscribing to ``pattern`` is allowed.

        True iff ``pattern`` is valid, every subject it can match is matched by the union of the
        subscribe allow patterns (or subscribe is unrestricted), and it collides with no deny
        pattern. Exact, not approximate: ``a.>`` is allowed by ``("a.*", "a.*.>")`` together.
        Never raises; memoized per pattern.
        """
        return self._subscribe.permits_pattern(pattern)

    def to_nats(self) -> NatsPermissions:
        """The ``pub``/``sub`` permission lists for a NATS user JWT or server config.

        Always safe to hand to nats-server, with or without response permissions: "nothing
        allowed" is emitted as ``deny: [">"]`` and "unrestricted" (``None``) as ``allow: [">"]``;
        an allow list is never empty on its own (NATS reads that as "everything", or, next to
        response permissions, as "nothing").
        """
        return {
            "pub": _nats_side(self.publish_allow, self.publish_deny),
            "sub": _nats_side(self.subscribe_allow, self.subscribe_deny),
        }
