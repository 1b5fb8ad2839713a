"""The actor runtime's errors, a branch of conat's error tree::

    conat.ConatError
    └── ActorError               "actor"
        ├── BrokenInvariant      500                  raise in a handler: this activation's state is
        │                                             broken; the caller gets 500, the key restarts
        ├── ActorDefinitionError "bad-actor"          an actor class or its options are invalid
        ├── Escalation           "escalated"          a supervisor gave up (N restarts in T seconds)
        └── OwnedElsewhere       "owned-elsewhere"    another process owns this keyed actor type
                                                      on the bus (refused at start, or lost later)

Codes callers see in :class:`conat.RemoteError` from the runtime itself (not from a handler):
``429`` the key's mailbox is full, ``503`` the actor is stopping, ``404``/``400`` unknown method or
bad arguments, ``500`` an unexpected handler error, ``"activation-failed"`` the message crashed the
key's activation repeatedly and went to the dead-letter subject, ``508`` a reentrant call that
would deadlock (the key is already waiting in the call chain).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from conat import ConatError, ErrorCode

__all__ = [
    "ACTIVATION_FAILED",
    "BUSY",
    "LOOP_DETECTED",
    "STOPPING",
    "ActorDefinitionError",
    "ActorError",
    "BrokenInvariant",
    "Escalation",
    "OwnedElsewhere",
]

BUSY: Final = 429
STOPPING: Final = 503
LOOP_DETECTED: Final = 508
ACTIVATION_FAILED: Final = "activation-failed"


class ActorError(ConatError):
    """Base of the actor runtime's errors."""

    code: ErrorCode = "actor"


class BrokenInvariant(ActorError):
    """Raised by actor code when its in-memory state can no longer be trusted.

    Unlike any other exception from a handler (which only becomes an error reply), this one also
    crashes the activation: it is discarded without ``on_deactivate`` and activated afresh, with
    backoff, under its supervisor's restart intensity.
    """

    code = 500

    def __init__(self, what: str) -> None:
        super().__init__(f"broken invariant: {what}")
        self.what = what


class ActorDefinitionError(ActorError, TypeError):
    """An actor class or its options are invalid (named in the message)."""

    code = "bad-actor"


class Escalation(ActorError):
    """A supervisor exceeded its restart intensity and handed the failure to its parent."""

    code = "escalated"

    def __init__(self, who: str, restarts: int, within: float, cause: BaseException | None) -> None:
        because = f": last error {type(cause).__name__}: {cause}" if cause is not None else ""
        super().__init__(f"{who} crashed {restarts} times within {within:g} s{because}")
        self.who = who
        self.restarts = restarts
        self.within = within
        self.cause = cause


class OwnedElsewhere(ActorError):
    """Another process owns this keyed actor type on the bus, so this one must not serve it.

    A keyed type has exactly one owner per bus (one activation per key). Raised by
    :meth:`ActorSystem.start` when an owner answers (``running`` False), or by
    :meth:`ActorSystem.wait` when two owners met after both started and this one yielded
    (``running`` True). ``owner`` holds what the owner said about itself: ``instance``, ``pid``,
    ``host``, ``client`` (its connection name) and ``since`` (epoch seconds).
    """

    code = "owned-elsewhere"

    def __init__(self, actor: str, subject: str, owner: dict[str, Any], *, running: bool) -> None:
        self.actor = actor
        self.subject = subject
        self.owner = owner
        self.running = running
        who = f"process {owner.get('pid') or '?'} on host {owner.get('host') or '?'}"
        if owner.get("client"):
            who += f" (connection {owner['client']!r})"
        since = owner.get("since")
        if isinstance(since, int | float) and since > 0:
            who += f", owner since {datetime.fromtimestamp(since, UTC):%Y-%m-%d %H:%M:%S}Z"
        what = (
            "this process stops serving it"
            if running
            else "this process refuses to serve it too"
        )
        super().__init__(
            f"keyed actor {actor} ({subject}) is already served by {who}; {what}. A keyed actor "
            "type has one owner per bus, so that no key is ever active twice: to scale, run it in "
            "one process (its keys run concurrently there), or split the keys over types with "
            "subjects of their own; unkeyed types may run in many processes with a queue group"
        )
