"""Well-known subjects: the only place that formats them (so no subject is ever spelled twice).

Services are addressed ``<service>.<scope>[.<rest>]`` where the scope is one token:

==================  ==========================
``project-<uuid>``  one project
``account-<uuid>``  one user account
``host-<uuid>``     one project host
``hub``             the master itself
==================  ==========================

Ids are UUIDs, given as :class:`uuid.UUID` or as the canonical string (lower-case, hyphenated,
36 characters). Anything else raises :class:`InvalidSubject` with ``reason="bad-id"`` and ``field``
naming the argument, so two spellings of one id can never produce two subjects.

Caller-supplied tokens (``*rest``) must each be one valid literal token; they are validated, never
split or escaped. Arbitrary text (paths, keys) goes through :func:`key_token` first. Every builder
returns a valid literal subject, or a valid pattern for the ``*_pattern`` ones.
"""

from __future__ import annotations

from typing import Final, Literal
from uuid import UUID

from ._grammar import InvalidSubject, validate_subject, validate_token
from ._tokens import encode_token

__all__ = [
    "HUB",
    "INTEREST_PROBE",
    "PUBLIC_PATTERN",
    "ScopeKind",
    "account_scope",
    "bootlog_host",
    "bootlog_project",
    "fs_project",
    "host_scope",
    "inbox_pattern",
    "inbox_prefix",
    "key_token",
    "master_account_api",
    "master_host_api",
    "parse_scope",
    "persist_pattern",
    "persist_scope",
    "project_pattern",
    "project_scope",
    "project_subject",
    "public",
    "runner_host",
    "scope_patterns",
    "service_subject",
    "watch_project",
    "watch_project_pattern",
]

ScopeKind = Literal["project", "account", "host", "hub"]

HUB: Final = "hub"
"""The scope token (and principal) of master itself."""

PUBLIC_PATTERN: Final = "public.>"
"""Everything under ``public``: anyone may publish and subscribe there."""

INTEREST_PROBE: Final = "$CONAT.interest"
"""The request every server of a cluster answers, about an empty account: what a client sends to
confirm that its subscriptions are known cluster-wide (``conat``'s ``subscribe(cluster_wide=True)``).
Anyone may publish it; its answers name the servers and say nothing else."""

PARTITION_PREFIX: Final = "$CONAT.part"
"""Where a bus's subject mapping sends a partitioned type's messages: ``$CONAT.part.<count>.<index>.``
followed by the subject as published (``actors`` partitions keyed types with it)."""


def partitioned_pattern(pattern: str) -> str:
    """The pattern ``pattern``'s subjects have once a subject mapping put them in a partition (any
    count, any index). nats-server checks a publish against the mapped subject, so a grant that lets
    a principal publish ``pattern`` must let it publish this too (:func:`subjects.grant` does)."""
    return f"{PARTITION_PREFIX}.*.*.{pattern}"

key_token = encode_token
"""Encode arbitrary text or bytes as one token (alias of :func:`encode_token`, named for builders)."""

_ID_KINDS: Final[dict[str, ScopeKind]] = {"project": "project", "account": "account", "host": "host"}


def _uuid(value: UUID | str, field: str) -> str:
    """The canonical string of a UUID given as ``UUID`` or as its canonical string."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str) and len(value) == 36:
        try:
            canonical = str(UUID(value))
        except ValueError:
            pass
        else:
            if canonical == value:
                return value
    raise InvalidSubject(value if isinstance(value, str) else repr(value), "bad-id", field=field)


def _join(head: str, rest: tuple[str, ...]) -> str:
    """``head`` (built here, already valid) followed by validated caller tokens.

    Each token is checked on its own first, so an error names the bad token; the whole subject is
    checked last, which can only fail on its length.
    """
    if not rest:
        return head
    for token in rest:
        validate_token(token)
    return validate_subject(".".join((head, *rest)))


def project_scope(project: UUID | str) -> str:
    """``project-<uuid>``."""
    return "project-" + _uuid(project, "project")


def account_scope(account: UUID | str) -> str:
    """``account-<uuid>``."""
    return "account-" + _uuid(account, "account")


def host_scope(host: UUID | str) -> str:
    """``host-<uuid>``."""
    return "host-" + _uuid(host, "host")


def parse_scope(scope: str) -> tuple[ScopeKind, str | None]:
    """Split a scope token into its kind and canonical id (``None`` for :data:`HUB`).

    ``parse_scope("project-<u>") == ("project", "<u>")``; ``parse_scope("hub") == ("hub", None)``.

    Raises:
        InvalidSubject: ``reason="bad-scope"`` for anything that is not a scope token.
    """
    if scope == HUB:
        return "hub", None
    if isinstance(scope, str):
        prefix, _, ident = scope.partition("-")
        kind = _ID_KINDS.get(prefix)
        if kind is not None:
            try:
                return kind, _uuid(ident, "scope")
            except InvalidSubject:
                pass
    raise InvalidSubject(scope if isinstance(scope, str) else repr(scope), "bad-scope", field="scope")


def _scope(scope: str) -> str:
    parse_scope(scope)
    return scope


def service_subject(service: str, scope: str, *rest: str) -> str:
    """``<service>.<scope>[.<rest>...]``: the generic shape every service address follows.

    Raises:
        InvalidSubject: ``service`` or a ``rest`` token is not one literal token, or ``scope`` is
            not a scope token.
    """
    return _join(validate_token(service) + "." + _scope(scope), rest)


def scope_patterns(scope: str) -> tuple[str, str]:
    """``(*.<scope>, *.<scope>.>)``: every service subject addressed to ``scope``.

    Used by permission policies ("a project may use every service of its own scope").
    """
    _scope(scope)
    return f"*.{scope}", f"*.{scope}.>"


def master_account_api(account: UUID | str) -> str:
    """``master.account-<a>.api``: master's API as seen by account ``a``."""
    return f"master.{account_scope(account)}.api"


def master_host_api(host: UUID | str) -> str:
    """``master.host-<h>.api``: master's API as seen by host ``h``."""
    return f"master.{host_scope(host)}.api"


def runner_host(host: UUID | str) -> str:
    """``runner.host-<h>``: the project runner of host ``h`` (only master calls it)."""
    return "runner." + host_scope(host)


def fs_project(project: UUID | str) -> str:
    """``fs.project-<p>``: the file server of project ``p``."""
    return "fs." + project_scope(project)


def watch_project(project: UUID | str, token: str, *rest: str) -> str:
    """``watch.project-<p>.<token>[.<rest>...]``: a watch socket of project ``p``.

    At least one token follows the scope, so the result always matches :func:`watch_project_pattern`.
    """
    return _join("watch." + project_scope(project), (token, *rest))


def watch_project_pattern(project: UUID | str) -> str:
    """``watch.project-<p>.>``."""
    return f"watch.{project_scope(project)}.>"


def persist_scope(scope: str, token: str, *rest: str) -> str:
    """``persist.<scope>.<token>[.<rest>...]``: the persist service of ``scope``."""
    return _join("persist." + _scope(scope), (token, *rest))


def persist_pattern(scope: str) -> str:
    """``persist.<scope>.>``."""
    return f"persist.{_scope(scope)}.>"


def bootlog_project(project: UUID | str) -> str:
    """``bootlog.project.<p>``: the boot log stream of project ``p`` (the bare id, not a scope)."""
    return "bootlog.project." + _uuid(project, "project")


def bootlog_host(host: UUID | str) -> str:
    """``bootlog.host.<h>``: the boot log stream of host ``h``."""
    return "bootlog.host." + _uuid(host, "host")


def project_subject(project: UUID | str, token: str, *rest: str) -> str:
    """``project.<p>.<token>[.<rest>...]``: served by the running process of project ``p``."""
    return _join("project." + _uuid(project, "project"), (token, *rest))


def project_pattern(project: UUID | str) -> str:
    """``project.<p>.>``."""
    return f"project.{_uuid(project, 'project')}.>"


def inbox_prefix(principal: str) -> str:
    """``_INBOX.<principal>``: the inbox prefix a principal's client must use (nats-py ``inbox_prefix``).

    ``principal`` is a scope token (``account-<uuid>``, ``host-<uuid>``, ``project-<uuid>``, ``hub``).
    """
    return "_INBOX." + _scope(principal)


def inbox_pattern(principal: str) -> str:
    """``_INBOX.<principal>.>``: the only inboxes ``principal`` may subscribe to."""
    return inbox_prefix(principal) + ".>"


def public(token: str, *rest: str) -> str:
    """``public.<token>[.<rest>...]``: open to everyone (matches :data:`PUBLIC_PATTERN`)."""
    return _join("public", (token, *rest))
