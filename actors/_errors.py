"""The actor runtime's errors: the ``ActorError`` branch of the error tree (drawn in conat._errors).

Codes a caller sees from the runtime itself (not from a handler), as :class:`conat.RemoteError`:
``429`` (:data:`conat.BUSY`) the key's mailbox is full, ``503`` (:data:`conat.UNAVAILABLE`) the
actor is stopping, ``404``/``400`` unknown method or bad arguments, ``500`` an unexpected handler
error, ``508`` (:data:`LOOP_DETECTED`) a reentrant call that would deadlock (the key is already
waiting in the call chain), and :class:`ActivationFailed` (``activation-failed``): the message crashed
the key's activation repeatedly and went to the dead-letter subject. A handler's own
:class:`conat.ConatError` reaches the caller with its code (and, for a class registered with
:func:`conat.register_error`, as that class).

What to do: ``429`` and ``503`` retry later; ``508`` fix the call graph (an actor calls back into a
key that is waiting for it); ``activation-failed`` look at the dead letter (its error says why the
key could not activate), fix that, then send again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from conat import INTERNAL, ConatError, ErrorCode, register_error

__all__ = [
    "LOOP_DETECTED",
    "ActivationFailed",
    "ActorDefinitionError",
    "ActorError",
    "BrokenInvariant",
    "Escalation",
    "IllegalTransition",
    "OwnedElsewhere",
    "PartitionsUnmapped",
]

LOOP_DETECTED: Final = 508
"""A call that would wait for itself: its key is already waiting further up the call chain."""


class ActorError(ConatError):
    """Base of the actor runtime's errors."""

    code: ErrorCode = "actor"


class BrokenInvariant(ActorError):
    """Raised by actor code when its in-memory state can no longer be trusted.

    Unlike any other exception from a handler (which only becomes an error reply), this one also
    crashes the activation: it is discarded without ``on_deactivate`` and activated afresh, with
    backoff, under its supervisor's restart intensity.
    """

    code = INTERNAL

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
    ``host``, ``client`` (its connection name) and ``since`` (epoch seconds); or only ``fenced``
    when this owner's connection was down for half its lease (a standby may have taken over).
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
        what = "this process stops serving it" if running else "this process refuses to serve it too"
        if owner.get("fenced"):
            super().__init__(
                f"keyed actor {actor} ({subject}): this process was {owner['fenced']}, past half "
                "its claim's lease, so a standby may own it now; this process stops serving it"
            )
            return
        super().__init__(
            f"keyed actor {actor} ({subject}) is already served by {who}; {what}. A keyed actor "
            "type has one owner per bus, so that no key is ever active twice: to scale, run it in "
            "one process (its keys run concurrently there), or split the keys over types with "
            "subjects of their own; unkeyed types may run in many processes with a queue group"
        )


class PartitionsUnmapped(ActorError):
    """A partitioned start found that the bus does not split the type's keys as it was told to:
    the subject mapping is missing, or splits them another number of ways, or a probe to one of its
    partitions reached another process (:mod:`actors._partitions`). Nothing is served: the process
    would wait for messages that never come. Start the bus with the mapping
    (``ServerConfig(mappings=...)`` with :func:`actors.subject_mapping`; ``conat up --workers N`` does it for
    persist), or start unpartitioned.

    Attributes:
        subject: the type's subject pattern.
        count: the number of partitions this process was started with.
        reason: what the probe found.
    """

    code = "partitions-unmapped"

    def __init__(self, subject: str, count: int, reason: str) -> None:
        self.subject = subject
        self.count = count
        self.reason = reason
        super().__init__(
            f"the bus does not split {subject} into {count} partitions ({reason}); start it with the"
            " subject mapping (ServerConfig(mappings=...), actors.subject_mapping) or serve unpartitioned"
        )


class IllegalTransition(ActorError, RuntimeError):
    """An activation was asked to do something its state does not allow: a bug in the runtime.

    Attributes:
        key: the activation's key.
        state: the state it was in (``"active"``...).
        event: the event it was given (``"passivate"``...).
    """

    code = "illegal-transition"

    def __init__(self, key: str, state: str, event: str) -> None:
        self.key = key
        self.state = state
        self.event = event
        super().__init__(f"activation {key!r}: event {event!r} is illegal in state {state}")


@register_error
class ActivationFailed(ActorError):
    """A message crashed its key's activation ``poison_after`` times and went to the dead-letter
    subject (``deadletter.<Name>``) instead of being processed. The key is not left dead: its
    next message tries to activate it again.

    Attributes:
        key: the key that could not be activated.
        reason: the activation's last error (``"OSError: ..."``); the dead letter carries it too.
    """

    code = "activation-failed"

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"activation of {key!r} failed: {reason}")
