"""The :class:`Actor` base class and the spec a subclass declares in its class statement.

An actor class is bound to a subject pattern when it is defined::

    class FileServer(Actor, subject="fs.*"):          # keyed: one instance per project token
        async def on_activate(self) -> None: ...
        async def read(self, path: str) -> bytes: ...   # an endpoint: public and async

Every ``*`` in the pattern is part of the key (the tokens it matched, joined by ``.``); a pattern
without ``*`` has exactly one instance (key ``""``). A trailing ``>`` is not part of the key, so
``persist.*.>`` is one instance per scope serving every subject under it.

Endpoints are the public ``async def`` methods a subclass defines; the lifecycle hooks below are not
endpoints. The runtime binds ``key`` and the context before ``on_activate``; an instance never sees
a message before ``on_activate`` has returned.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, final

from conat import Clock, Message
from subjects import InvalidSubject, validate_pattern, validate_subject, validate_token

from ._errors import ActorDefinitionError
from ._policy import RestartPolicy

if TYPE_CHECKING:
    from conat import Client

    from ._activation import Activation, Timer

__all__ = ["NO_REPLY", "Actor", "ActorSpec", "Reply"]

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_SEMVER_RE: Final = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)


@final
@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's return value sent exactly as given (an encoding other than msgpack, headers):
    e.g. ``return Reply(jwt_bytes, encoding="raw")`` for a peer that is not a conat client."""

    data: Any
    encoding: str | None = None
    headers: dict[str, str] | None = None


@final
class _NoReply:
    def __repr__(self) -> str:
        return "NO_REPLY"


NO_REPLY: Final = _NoReply()
"""Return this from a handler that answered by itself (e.g. streamed with ``msg.respond`` and
``msg.end``): the runtime then sends nothing more."""


@final
@dataclass(frozen=True, slots=True)
class ActorSpec:
    """What an actor class declared: where it listens and how its activations are managed.

    Attributes:
        subject: the pattern the actor type subscribes to.
        name: the service name in ``$SRV`` discovery (``[A-Za-z0-9_-]+``).
        version: a semantic version, reported by ``$SRV.INFO``.
        queue: a queue group, so several processes share the subject's messages.
        max_buffer: per-key mailbox capacity (bus messages); a request beyond it gets 429.
        idle: seconds without a message after which a key is passivated (None: never).
        max_active: cap on active keys; the least recently used idle key is passivated beyond it.
        policy: restart policy of the type's supervisor (intensity and backoff).
        poison_after: activation failures with the same message at the head of the mailbox after
            which that message goes to the dead-letter subject.
        dead_letter: subject for poison messages (default ``deadletter.<name>``).
    """

    subject: str
    name: str
    version: str = "1.0.0"
    description: str = ""
    queue: str | None = None
    max_buffer: int = 1000
    idle: float | None = 300.0
    max_active: int | None = 100_000
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    poison_after: int = 2
    dead_letter: str = ""
    key_positions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        try:
            validate_pattern(self.subject)
            if self.queue is not None:
                validate_subject(self.queue)
        except InvalidSubject as e:
            raise ActorDefinitionError(f"actor {self.name!r}: bad subject or queue: {e}") from None
        if not _NAME_RE.match(self.name):
            raise ActorDefinitionError(f"actor name {self.name!r} must match [A-Za-z0-9_-]+")
        if not _SEMVER_RE.match(self.version):
            raise ActorDefinitionError(f"actor {self.name!r}: version {self.version!r} is not semver")
        if self.max_buffer < 1:
            raise ActorDefinitionError(f"actor {self.name!r}: max_buffer must be >= 1")
        if self.idle is not None and self.idle <= 0:
            raise ActorDefinitionError(f"actor {self.name!r}: idle must be > 0 or None")
        if self.max_active is not None and self.max_active < 1:
            raise ActorDefinitionError(f"actor {self.name!r}: max_active must be >= 1 or None")
        if self.poison_after < 1:
            raise ActorDefinitionError(f"actor {self.name!r}: poison_after must be >= 1")
        tokens = self.subject.split(".")
        object.__setattr__(self, "key_positions", tuple(i for i, t in enumerate(tokens) if t == "*"))
        if not self.dead_letter:
            object.__setattr__(self, "dead_letter", f"deadletter.{self.name}")

    @property
    def keyed(self) -> bool:
        return bool(self.key_positions)

    def key_of(self, subject: str) -> str:
        """The key a concrete subject addresses (the tokens at the pattern's ``*`` positions)."""
        positions = self.key_positions
        if not positions:
            return ""
        tokens = subject.split(".", positions[-1] + 1)
        if len(positions) == 1:
            return tokens[positions[0]]
        return ".".join(tokens[i] for i in positions)

    def subject_for(self, key: str = "", tail: str | None = None) -> str:
        """The concrete subject that addresses ``key`` (and ``tail`` for a pattern ending in ``>``)."""
        parts = key.split(".") if self.key_positions else []
        if len(parts) != len(self.key_positions):
            raise ActorDefinitionError(
                f"actor {self.name!r} ({self.subject}) takes a key of {len(self.key_positions)} "
                f"token(s), got {key!r}"
            )
        for part in parts:
            try:
                validate_token(part)
            except InvalidSubject as e:
                raise ActorDefinitionError(f"actor {self.name!r}: bad key {key!r}: {e}") from None
        tokens = self.subject.split(".")
        for position, part in zip(self.key_positions, parts, strict=True):
            tokens[position] = part
        if tokens[-1] == ">":
            if not tail:
                raise ActorDefinitionError(f"actor {self.name!r} ({self.subject}) needs a subject tail")
            tokens[-1] = tail
        elif tail:
            raise ActorDefinitionError(f"actor {self.name!r} ({self.subject}) takes no subject tail")
        subject = ".".join(tokens)
        validate_subject(subject)
        return subject


class Actor:
    """Base class of actors. Subclass with ``subject=`` (and the other :class:`ActorSpec` fields)
    as class keywords; override the lifecycle hooks you need; add endpoints as public async methods.

    Guarantees: one instance per key per process; its turns (messages, timer ticks, reminders) run
    one at a time, messages in arrival order (FIFO per publishing connection, as NATS delivers
    them); different keys run concurrently. A handler's exception becomes an error reply and never
    ends the actor; :class:`BrokenInvariant` additionally restarts the activation.
    """

    __actor_spec__: ClassVar[ActorSpec | None] = None
    __conat_private__: ClassVar[frozenset[str]] = frozenset()

    key: str
    """The identity token(s) this instance serves ("" for an unkeyed actor)."""

    _activation: Activation

    def __init_subclass__(cls, *, subject: str | None = None, **options: Any) -> None:
        """Bind the class: ``subject=`` plus any :class:`ActorSpec` field as a class keyword.

        A subclass without keywords serves like its parent; one with keywords but no ``subject``
        keeps the parent's subject and other settings, overriding only what it names.
        """
        super().__init_subclass__()
        base = cls.__actor_spec__
        if subject is None and not options:
            return
        if subject is None:
            if base is None:
                raise ActorDefinitionError(f"actor class {cls.__name__} needs subject=")
            inherited = {
                f.name: getattr(base, f.name)
                for f in dataclasses.fields(base)
                if f.name not in ("subject", "name", "dead_letter", "key_positions")
            }
            options = {**inherited, **options}
            subject = base.subject
        options.setdefault("name", cls.__name__)
        try:
            cls.__actor_spec__ = ActorSpec(subject, **options)
        except TypeError as e:
            if isinstance(e, ActorDefinitionError):
                raise
            raise ActorDefinitionError(f"actor class {cls.__name__}: {e}") from None

    @classmethod
    def spec(cls) -> ActorSpec:
        spec = cls.__actor_spec__
        if spec is None:
            raise ActorDefinitionError(f"{cls.__name__} is not bound to a subject (pass subject=)")
        return spec

    # -- lifecycle hooks (override) --------------------------------------------------------
    async def on_activate(self) -> None:
        """Load state for ``self.key``. An exception fails the activation (restarted with backoff)."""

    async def on_deactivate(self) -> None:
        """Best effort (a crash or a hard stop skips it): never the only place state is saved."""

    async def on_reminder(self, name: str) -> None:
        """A persisted reminder set with :meth:`reminder` is due (the key was activated for it)."""

    async def receive(self, msg: Message) -> Any:
        """Handle one message; the return value is the reply (a :class:`Reply` to choose its
        encoding, :data:`NO_REPLY` if the handler answered by itself). Default: typed RPC."""
        return await self._activation.runtime.dispatcher.invoke(self, msg)

    def handle_now(self, msg: Message) -> bool:
        """A synchronous fast path, tried on the connection's read loop before ``msg`` is queued.

        The runtime offers a message here only when this instance is active and idle (nothing in
        its mailbox, no turn running, no passivation asked for), so whatever this starts, it
        starts in the key's order: a message it declines (``False``, the default) becomes a turn
        as usual, and every later message waits behind that turn. Return ``True`` when it took
        the message: it then answers it itself, now or from a completion callback (e.g. with
        :meth:`conat.Message.respond_nowait`). Use it for work that needs no ``await`` to start
        (queueing an operation whose completion replies), so that a busy key pays no task and no
        turn per message.

        It must not block. An exception is answered like a failed turn's (an error reply).
        """
        return False

    # -- services the runtime gives an activation ------------------------------------------
    @property
    def client(self) -> Client:
        """The connection the actor system runs on (to call other actors or publish)."""
        return self._activation.runtime.client

    @property
    def clock(self) -> Clock:
        return self._activation.runtime.clock

    def passivate(self) -> None:
        """Deactivate this key after the current turn (the next message activates it again)."""
        self._activation.passivate_requested = True

    def timer(
        self, delay: float, callback: Callable[[], Awaitable[object]], *, period: float | None = None
    ) -> Timer:
        """Run ``callback`` as a turn of this actor after ``delay`` s (then every ``period`` s).

        The timer lives with the activation: passivation or a crash cancels it. An exception in
        ``callback`` is a runtime crash of the activation (it is restarted with backoff).
        """
        return self._activation.add_timer(delay, callback, period)

    async def reminder(self, name: str, delay: float, *, period: float | None = None) -> None:
        """Persist a reminder: ``on_reminder(name)`` runs after ``delay`` s (then every ``period``
        s), activating the key if needed, and survives restarts when the system has a durable
        :class:`ReminderStore`. Setting a name again replaces it."""
        await self._activation.runtime.set_reminder(self.key, name, delay, period)

    async def cancel_reminder(self, name: str) -> None:
        await self._activation.runtime.cancel_reminder(self.key, name)


# Every public coroutine of the base class (hooks, reminder helpers) is runtime API, never an
# endpoint a caller could invoke over the bus.
Actor.__conat_private__ = frozenset(
    name for name, _ in inspect.getmembers(Actor, inspect.iscoroutinefunction) if not name.startswith("_")
)
