"""Subject grammar: NATS's rules, checked in one place.

A subject is a sequence of tokens joined by ``.``. The rules are those of nats-server
(``server/sublist.go``: ``IsValidSubject`` / ``IsValidLiteralSubject``), made a little stricter
where NATS's leniency only causes trouble:

- no empty subject and no empty token (``a..b``, ``.a``, ``a.``);
- no whitespace anywhere: ASCII space, tab, CR, LF, form feed, and also every other character
  :meth:`str.isspace` accepts (NBSP, U+2028, ...). NATS rejects only the ASCII ones, but the others
  are invisible in logs and make subjects that look equal differ;
- no control characters (U+0000-U+001F, U+007F-U+009F) and no lone surrogates (they cannot be
  sent as UTF-8);
- a token is a wildcard only when it is exactly ``*`` (one token) or ``>`` (one or more tokens, and
  only as the last token), as in NATS. A token that mixes ``*`` or ``>`` with other text (``a*``,
  ``>b``) is rejected: nats-server would take it as literal text, but nats-py (2.16) refuses to
  *subscribe* to any subject containing one, so such a subject could be published but never
  received through conat;
- a *literal* subject (what you publish to) has no wildcard token; a *pattern* (what you subscribe
  to) may have them. Every literal subject is also a pattern;
- at most :data:`MAX_SUBJECT_BYTES` bytes in UTF-8 (see there for why).

Errors: :class:`InvalidSubject` (a ``ValueError``, code 400; branch on its ``reason``, one of
:data:`Reason`). Its place beside conat's error tree is drawn in ``conat._errors``. When a string breaks several rules, the one reported is the first in this order: not a string,
empty, too long, bad character (leftmost), empty token (leftmost), wildcard misuse (leftmost token).
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "MAX_SUBJECT_BYTES",
    "InvalidSubject",
    "Reason",
    "is_literal",
    "is_valid_pattern",
    "is_valid_subject",
    "split_tokens",
    "validate_pattern",
    "validate_subject",
    "validate_token",
]

MAX_SUBJECT_BYTES: Final = 2000
"""Longest subject accepted, in UTF-8 bytes.

nats-server's default ``max_control_line`` is 4096 bytes, and a publish line carries a subject *and* a
reply subject (``HPUB <subject> <reply> <hdr> <total>``). Two subjects of this size plus the framing
still fit, so a valid subject can never make the server drop the connection for an over-long line.
"""

Reason = Literal[
    "not-a-string",
    "empty-subject",
    "too-long",
    "whitespace",
    "control-character",
    "bad-unicode",
    "empty-token",
    "dot-in-token",
    "wildcard-in-token",
    "full-wildcard-not-last",
    "wildcard-in-literal",
    "bad-token",
    "bad-scope",
    "bad-id",
]
"""Stable, machine-readable name of the rule a subject (or token, or id) broke."""

_DESCRIPTIONS: Final[dict[Reason, str]] = {
    "not-a-string": "is not a string",
    "empty-subject": "is empty",
    "too-long": f"is longer than {MAX_SUBJECT_BYTES} bytes in UTF-8",
    "whitespace": "contains whitespace",
    "control-character": "contains a control character",
    "bad-unicode": "contains a lone surrogate (not encodable as UTF-8)",
    "empty-token": "is empty",
    "dot-in-token": "contains '.' (encode arbitrary text with encode_token)",
    "wildcard-in-token": "mixes '*' or '>' with other characters (wildcards must be whole tokens)",
    "full-wildcard-not-last": "is '>', which is only allowed as the last token",
    "wildcard-in-literal": "is a wildcard, not allowed in a literal subject",
    "bad-token": "was not made by encode_token",
    "bad-scope": "is not a scope token (project-<uuid>, account-<uuid>, host-<uuid> or hub)",
    "bad-id": "is not a canonical UUID",
}

_WILDCARDS: Final = frozenset(("*", ">"))


class InvalidSubject(ValueError):
    """A subject, pattern, token or id broke the grammar.

    Branch on ``reason`` (stable), never on the message. Fields:

    - ``subject``: the offending string (``repr()`` of the value when it was not a string);
    - ``reason``: which rule, one of :data:`Reason`;
    - ``token`` / ``index``: the bad token and its 0-based position, when one token is to blame;
    - ``field``: what the string was meant to be (``"subject"``, ``"pattern"``, ``"token"``,
      ``"project"``...), used in the message.
    """

    code: Final = 400

    def __init__(
        self,
        subject: str,
        reason: Reason,
        token: str | None = None,
        index: int | None = None,
        field: str = "subject",
    ) -> None:
        self.subject = subject
        self.reason: Reason = reason
        self.token = token
        self.index = index
        self.field = field
        shown = subject if len(subject) <= 80 else subject[:77] + "..."
        if token is not None and index is not None:
            where = f"token {index} {token if len(token) <= 40 else token[:37] + '...'!r}"
            message = f"invalid {field} {shown!r}: {where} {_DESCRIPTIONS[reason]}"
        else:
            message = f"invalid {field} {shown!r}: {_DESCRIPTIONS[reason]}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[InvalidSubject], tuple[str, Reason, str | None, int | None, str]]:
        # The default reduce would call cls(message): keep the fields across pickling instead.
        return (type(self), (self.subject, self.reason, self.token, self.index, self.field))


def _token_at(s: str, position: int) -> tuple[str, int]:
    """The token containing character ``position`` of ``s``, and its index."""
    index = s.count(".", 0, position)
    start = s.rfind(".", 0, position) + 1
    end = s.find(".", position)
    return s[start : end if end >= 0 else len(s)], index


def _char_problem(s: str) -> tuple[Reason, int] | None:
    """Slow path: find the leftmost forbidden character, if any (some non-printables are allowed)."""
    for position, ch in enumerate(s):
        o = ord(ch)
        if ch.isspace():
            return "whitespace", position
        if o < 0x20 or 0x7F <= o <= 0x9F:
            return "control-character", position
        if 0xD800 <= o <= 0xDFFF:
            return "bad-unicode", position
    return None


def _problem(s: object, literal: bool) -> tuple[Reason, str | None, int | None] | None:
    """Why ``s`` is not a valid subject (``literal``) or pattern, or ``None`` when it is.

    Built from C-level string operations so that the common, valid case never loops in Python.
    """
    if not isinstance(s, str):
        return "not-a-string", None, None
    if not s:
        return "empty-subject", None, None
    if len(s) > MAX_SUBJECT_BYTES or (
        not s.isascii() and len(s.encode("utf-8", "surrogatepass")) > MAX_SUBJECT_BYTES
    ):
        return "too-long", None, None
    # isprintable() is False for every whitespace except " ", every control character and every
    # surrogate, so valid subjects skip the character loop.
    if " " in s or not s.isprintable():
        found = _char_problem(s)
        if found is not None:
            token, index = _token_at(s, found[1])
            return found[0], token, index
    if s[0] == "." or s[-1] == "." or ".." in s:
        index = s.split(".").index("")
        return "empty-token", "", index
    if "*" in s or ">" in s:
        tokens = s.split(".")
        last = len(tokens) - 1
        for index, token in enumerate(tokens):
            if token in _WILDCARDS:
                if literal:
                    return "wildcard-in-literal", token, index
                if token == ">" and index != last:
                    return "full-wildcard-not-last", token, index
            elif "*" in token or ">" in token:
                return "wildcard-in-token", token, index
    return None


def _raise(s: object, literal: bool, field: str) -> None:
    problem = _problem(s, literal)
    if problem is not None:
        reason, token, index = problem
        raise InvalidSubject(s if isinstance(s, str) else repr(s), reason, token, index, field)


def validate_subject(subject: str) -> str:
    """Check that ``subject`` is a literal subject (no wildcards), the kind you may publish to.

    Returns:
        ``subject`` unchanged, so calls can be chained.

    Raises:
        InvalidSubject: with the ``reason``, bad ``token`` and its ``index``.
    """
    if _problem(subject, True) is not None:
        _raise(subject, True, "subject")
    return subject


def validate_pattern(pattern: str) -> str:
    """Check that ``pattern`` is a valid subscription pattern (``*`` and a final ``>`` allowed).

    Returns:
        ``pattern`` unchanged.

    Raises:
        InvalidSubject: with the ``reason``, bad ``token`` and its ``index``.
    """
    if _problem(pattern, False) is not None:
        _raise(pattern, False, "pattern")
    return pattern


def validate_token(token: str) -> str:
    """Check that ``token`` is one literal token: a valid literal subject without ``.``.

    Builders of well-known subjects call this on every caller-supplied token, so a token can never
    silently add levels to a subject. Arbitrary text must go through ``encode_token`` first.

    Raises:
        InvalidSubject: ``reason`` is ``"dot-in-token"`` or one of the subject reasons.
    """
    if isinstance(token, str) and "." in token:
        raise InvalidSubject(token, "dot-in-token", field="token")
    if _problem(token, True) is not None:
        _raise(token, True, "token")
    return token


def is_valid_subject(subject: object) -> bool:
    """Whether ``subject`` is a valid literal subject. Never raises."""
    return _problem(subject, True) is None


def is_valid_pattern(pattern: object) -> bool:
    """Whether ``pattern`` is a valid pattern (literal subjects are patterns too). Never raises."""
    return _problem(pattern, False) is None


def is_literal(pattern: str) -> bool:
    """Whether a *valid* pattern has no wildcard token, i.e. matches exactly one subject.

    Does not validate (it is meant for already-checked patterns): ``is_literal("a..b")`` is True.
    Use :func:`is_valid_subject` to ask both questions at once.
    """
    return ("*" not in pattern and ">" not in pattern) or _WILDCARDS.isdisjoint(pattern.split("."))


def split_tokens(pattern: str) -> tuple[str, ...]:
    """Validate ``pattern`` (literal subjects are patterns too) and split it into its tokens.

    Raises:
        InvalidSubject: when ``pattern`` is not a valid pattern.
    """
    return tuple(validate_pattern(pattern).split("."))
