"""The actor runtime's errors, a branch of conat's error tree::

    conat.ConatError
    └── ActorError               "actor"
        ├── BrokenInvariant      500                  raise in a handler: this activation's state is
        │                                             broken; the caller gets 500, the key restarts
        ├── ActorDefinitionError "bad-actor"          an actor class or its options are invalid
        └── Escalation           "escalated"          a supervisor gave up (N restarts in T seconds)

Codes callers see in :class:`conat.RemoteError` from the runtime itself (not from a handler):
``429`` the key's mailbox is full, ``503`` the actor is stopping, ``404``/``400`` unknown method or
bad arguments, ``500`` an unexpected handler error, ``"activation-failed"`` the message crashed the
key's activation repeatedly and went to the dead-letter subject, ``508`` a reentrant call that
would deadlock (the key is already waiting in the call chain).
"""

from __future__ import annotations

from typing import Final

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
