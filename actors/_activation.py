"""One key's activation: its lifecycle state machine, its mailbox and the task that runs its turns.

Theory of operation
-------------------
The router (``ActorRuntime._route``) puts each message into the key's mailbox and, if no task is
running for the key, starts one. That task drains the mailbox: it activates the key if it is not
active, then runs turns one at a time until the mailbox is empty. It then lingers, waiting for the
next message, but only while it is among the runtime's most recently used keys (a bounded set):
busy keys skip the cost of a new task per message, and an idle key costs an object and no task,
which is what lets one process hold many thousands of keys.

States and the events that move between them (anything else is a runtime bug and raises
:class:`IllegalTransition`)::

    INACTIVE   --activate-->    ACTIVATING --activated--> ACTIVE
    ACTIVATING --failed-->      INACTIVE                  (backoff, poison count)
    ACTIVE     --passivate-->   PASSIVATING --deactivated--> INACTIVE
    ACTIVE     --crash-->       INACTIVE                  (no on_deactivate; backoff)

Passivation is itself a turn (queued behind the messages already in the mailbox), so it never
interleaves with a message. Messages that arrive while a key is passivating wait in the same
mailbox and reactivate it as soon as the deactivation is done: no message is processed by a
deactivated instance and none is lost.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

from conat import (
    INTERNAL,
    UNAVAILABLE,
    BackoffSequence,
    ConatError,
    Message,
    PayloadError,
    error_reply,
    reply_encoding,
    respond_error,
)

from ._actor import NO_REPLY, Reply
from ._chain import CHAIN_HEADER, current_turn
from ._errors import BrokenInvariant, IllegalTransition
from ._mailbox import Mailbox

if TYPE_CHECKING:
    from ._actor import Actor
    from ._runtime import ActorRuntime

__all__ = ["Activation", "State", "Timer"]

log = logging.getLogger("conat.actors")


class State(enum.Enum):
    INACTIVE = "inactive"
    ACTIVATING = "activating"
    ACTIVE = "active"
    PASSIVATING = "passivating"


_TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.INACTIVE, "activate"): State.ACTIVATING,
    (State.ACTIVATING, "activated"): State.ACTIVE,
    (State.ACTIVATING, "failed"): State.INACTIVE,
    (State.ACTIVE, "passivate"): State.PASSIVATING,
    (State.PASSIVATING, "deactivated"): State.INACTIVE,
    (State.ACTIVE, "crash"): State.INACTIVE,
}


@final
@dataclass(frozen=True, slots=True)
class _Passivate:
    """The passivation turn."""


@final
@dataclass(frozen=True, slots=True)
class _Call:
    """A runtime turn: a timer tick or a due reminder."""

    what: str
    fn: Callable[[], Awaitable[object]] | None = None
    reminder: str | None = None


PASSIVATE: Final = _Passivate()
Item = Message | _Passivate | _Call


@final
class Timer:
    """A timer of one activation; :meth:`cancel` stops it (passivation cancels it too)."""

    def __init__(self, activation: Activation, fn: Callable[[], Awaitable[object]], period: float | None) -> None:
        self._activation = activation
        self._fn = fn
        self.period = period
        self._pending = False
        self._task: asyncio.Task[None] | None = None

    def _start(self, delay: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(delay))

    async def _run(self, delay: float) -> None:
        clock = self._activation.runtime.clock
        due = clock.now() + delay
        while True:
            await clock.sleep_until(due)
            if not self._pending:  # a slow turn coalesces ticks instead of piling them up
                self._pending = True
                self._activation.enqueue_internal(_Call("timer", self._fire))
            if self.period is None:
                return
            due += self.period

    async def _fire(self) -> None:
        self._pending = False
        await self._fn()

    def cancel(self) -> None:
        self._activation.timers.discard(self)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()


async def _send_reply(msg: Message, reply: Reply) -> None:
    """Send a handler's :class:`Reply`: its encoding if it chose one, else the caller's."""
    if msg.reply:
        encoding = reply.encoding or reply_encoding(msg, reply.data)
        try:
            await msg.respond(reply.data, encoding=encoding, headers=reply.headers)
        except ConatError as e:
            await respond_error(msg, *error_reply(e))


class Activation:
    """The runtime's record of one key (see the module docstring)."""

    __slots__ = (
        "backoff",
        "head_failures",
        "ident",
        "incoming_chain",
        "instance",
        "key",
        "last_used",
        "mailbox",
        "not_before",
        "passivate_requested",
        "runtime",
        "state",
        "task",
        "timers",
        "waiter",
    )

    def __init__(self, runtime: ActorRuntime, key: str, now: float) -> None:
        self.runtime = runtime
        self.key = key
        self.ident = f"{runtime.spec.name}/{key}"  # this activation in a call chain
        self.incoming_chain: str | None = None  # the chain the running turn's message came with
        self.state = State.INACTIVE
        self.mailbox: Mailbox[Item] = Mailbox(key, runtime.spec.max_buffer)
        self.instance: Actor | None = None
        self.task: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.timers: set[Timer] = set()
        self.last_used = now
        self.not_before = 0.0
        self.passivate_requested = False
        self.head_failures = 0
        self.backoff: BackoffSequence | None = None  # made on the first crash: most keys never crash

    def __repr__(self) -> str:
        return f"<Activation {self.runtime.spec.name}/{self.key!r} {self.state.value}>"

    def _move(self, event: str) -> None:
        target = _TRANSITIONS.get((self.state, event))
        if target is None:
            raise IllegalTransition(self.key, self.state.value, event)
        self.state = target

    @property
    def idle(self) -> bool:
        """Nothing queued and no turn running (its task, if any, only lingers)."""
        return not self.mailbox and (self.task is None or self.waiter is not None)

    # -- queueing --------------------------------------------------------------------------
    def enqueue_internal(self, item: _Call | _Passivate) -> None:
        self.mailbox.put_internal(item)
        self.runtime.wake(self)

    def add_timer(self, delay: float, fn: Callable[[], Awaitable[object]], period: float | None) -> Timer:
        if delay < 0 or (period is not None and period <= 0):
            raise ValueError("a timer needs delay >= 0 and period > 0")
        timer = Timer(self, fn, period)
        self.timers.add(timer)
        timer._start(delay)
        return timer

    def _cancel_timers(self) -> None:
        for timer in list(self.timers):
            timer.cancel()

    # -- the turn loop ---------------------------------------------------------------------
    async def run(self) -> None:
        """Drain the mailbox (started by the runtime when messages arrive; exits when empty)."""
        runtime = self.runtime
        mailbox = self.mailbox
        current_turn.set(self)  # this task's own context: calls from its turns carry the chain
        try:
            while runtime.running:
                if not mailbox:
                    if self.state is not State.ACTIVE or not await runtime.linger(self):
                        break
                    continue
                item = mailbox.peek()
                if isinstance(item, _Passivate):
                    mailbox.get()
                    if self.state is State.ACTIVE:
                        await self.deactivate()
                    continue
                if self.state is State.INACTIVE and not await self._activate():
                    continue
                mailbox.get()
                if isinstance(item, Message):
                    self.incoming_chain = item.header(CHAIN_HEADER)
                    await self._message_turn(item)
                else:
                    self.incoming_chain = None
                    await self._call_turn(item)
                self.incoming_chain = None
                if self.passivate_requested and self.state is State.ACTIVE:
                    await self.deactivate()
        finally:
            self.task = None
            runtime.settled(self)

    async def _activate(self) -> bool:
        runtime = self.runtime
        if self.not_before > runtime.clock.now():
            await runtime.clock.sleep_until(self.not_before)
        self._move("activate")
        instance = runtime.new_instance(self)
        try:
            await instance.on_activate()
        except asyncio.CancelledError:
            self._move("failed")
            raise
        except Exception as e:  # noqa: BLE001 - user code; the failure is supervised and logged
            self._move("failed")
            self._activation_failed(e)
            return False
        self.instance = instance
        self.passivate_requested = False
        self.head_failures = 0
        self._move("activated")
        runtime.stats.activations += 1
        return True

    def _activation_failed(self, error: Exception) -> None:
        runtime = self.runtime
        runtime.stats.activation_failures += 1
        log.warning("activation of %s/%r failed: %r", runtime.spec.name, self.key, error)
        self.head_failures += 1
        if self.head_failures >= runtime.spec.poison_after and self.mailbox:
            self.head_failures = 0
            poison = self.mailbox.get()
            if isinstance(poison, Message):
                runtime.dead_letter(self.key, poison, error)
        self._supervise(error)

    def _supervise(self, error: BaseException) -> None:
        runtime = self.runtime
        now = runtime.clock.now()
        if self.backoff is None:
            self.backoff = BackoffSequence(runtime.spec.policy.backoff, runtime.rand)
        self.not_before = now + self.backoff.next_delay(now)
        runtime.child_crashed(self, error)

    async def _message_turn(self, msg: Message) -> None:
        runtime = self.runtime
        instance = self.instance
        assert instance is not None
        micro = runtime.micro
        started = time.perf_counter_ns()
        endpoint = "receive" if not runtime.default_receive else None  # None: not an endpoint's
        try:
            if runtime.default_receive:
                dispatcher = runtime.dispatcher
                request = dispatcher.decode(msg)
                target = dispatcher.endpoints.get(request.name)
                if target is None:
                    result = await dispatcher.call(instance, request)  # raises the 404
                else:
                    endpoint = request.name
                    args, kwargs = target.bind(request)
                    result = await target.fn(instance, *args, **kwargs)
            else:
                result = await instance.receive(msg)
        except asyncio.CancelledError:
            await respond_error(msg, UNAVAILABLE, f"actor {runtime.spec.name} stopped during the call")
            raise
        except BrokenInvariant as e:
            micro.record(endpoint, time.perf_counter_ns() - started, e)
            await respond_error(msg, *error_reply(e))
            self.crash(e)
        except Exception as e:
            if not isinstance(e, ConatError):
                log.exception("%s/%r: handler failed on %s", runtime.spec.name, self.key, msg.subject)
            micro.record(endpoint, time.perf_counter_ns() - started, e)
            await respond_error(msg, *error_reply(e))
        else:
            micro.record(endpoint, time.perf_counter_ns() - started, None)
            if not msg.reply or result is NO_REPLY:
                return
            if result.__class__ is Reply:
                await _send_reply(msg, result)
                return
            try:
                await msg.respond(result, encoding=reply_encoding(msg, result))
            except PayloadError as e:
                await respond_error(msg, INTERNAL, f"cannot encode the result: {e.detail}")

    async def _call_turn(self, call: _Call) -> None:
        instance = self.instance
        assert instance is not None
        try:
            if call.reminder is not None:
                await instance.on_reminder(call.reminder)
            elif call.fn is not None:
                await call.fn()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("%s/%r: %s turn failed", self.runtime.spec.name, self.key, call.what)
            self.crash(e)

    def crash(self, error: BaseException) -> None:
        """Discard the instance (its state is not trusted) and restart later with backoff."""
        self._move("crash")
        self._cancel_timers()
        self.instance = None
        self.runtime.stats.crashes += 1
        self._supervise(error)

    async def deactivate(self) -> None:
        """Passivate: cancel timers, run ``on_deactivate`` (best effort), forget the instance."""
        self._move("passivate")
        self._cancel_timers()
        instance, self.instance = self.instance, None
        try:
            if instance is not None:
                await instance.on_deactivate()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s/%r: on_deactivate failed", self.runtime.spec.name, self.key)
        finally:
            self._move("deactivated")
            self.passivate_requested = False
            self.runtime.stats.passivations += 1

    def reject_queued(self, code: Any, why: str) -> int:
        """Answer every queued request with an error (a hard stop); returns how many."""
        rejected = 0
        for item in self.mailbox.drain():
            if isinstance(item, Message) and item.reply:
                rejected += 1
                self.runtime.spawn(respond_error(item, code, why))
        return rejected

