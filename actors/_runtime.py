"""One actor type running in one process: intake, routing to keys, passivation, supervision, stop.

The type subscribes once to its pattern (with its queue group, if any). The subscription's
``dispatch`` hook routes each message synchronously from the connection's read loop into the
key's bounded mailbox, so the bus never waits on an actor and a full mailbox is answered (429) at
once. The type is the supervisor of its activations: every activation crash counts against the
restart intensity of :class:`RestartPolicy`; exceeding it escalates to the parent (the
:class:`ActorSystem`), which restarts the whole type or gives up.

Stopping is graceful (:meth:`ActorRuntime.stop`): intake is drained (the server stops routing here;
what it routed before still arrives), in-flight and queued turns run until the deadline, what is
left is cancelled and answered with 503, and the remaining activations are deactivated.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, final

import msgspec

from conat import Client, ConatError, Message, Subscription
from conat._clock import Clock, SystemClock
from conat._service import Dispatcher, respond_error

from ._activation import PASSIVATE, Activation, State, _Call
from ._actor import Actor, ActorSpec
from ._chain import CHAIN_HEADER, parse, refusal
from ._errors import ACTIVATION_FAILED, LOOP_DETECTED, STOPPING, Escalation
from ._mailbox import MailboxStatistics
from ._policy import Escalate, RestartTracker
from ._reminders import Reminder, ReminderStore

__all__ = ["ActorRuntime", "ActorStatistics", "DeadLetter", "EndpointStatistics"]

log = logging.getLogger("conat.actors")

A = TypeVar("A", bound=Actor)
T = TypeVar("T")
_MIN_SCAN: Final = 0.05
LINGER_CAP: Final = 256
"""How many idle keys may keep their task waiting for the next message."""
_MAX_SCAN: Final = 60.0


class DeadLetter(msgspec.Struct, frozen=True):
    """What the dead-letter subject receives for a message that kept crashing an activation."""

    actor: str
    key: str
    subject: str
    error: str
    payload: bytes
    headers: dict[str, str] = {}


@final
@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    """Per-endpoint figures in the shape of NATS micro ``$SRV.STATS`` (times in nanoseconds)."""

    name: str
    num_requests: int
    num_errors: int
    last_error: str
    processing_time: int

    @property
    def average_processing_time(self) -> int:
        return self.processing_time // self.num_requests if self.num_requests else 0


@final
@dataclass(frozen=True, slots=True)
class ActorStatistics:
    """A snapshot of one actor type in this process."""

    name: str
    subject: str
    queue: str | None
    started: str
    active_keys: int
    running_keys: int
    buffered: int
    activations: int
    activation_failures: int
    passivations: int
    crashes: int
    restarts: int
    dead_letters: int
    dropped: int
    rejected_stopping: int
    endpoints: tuple[EndpointStatistics, ...]


@dataclass
class _Counters:
    activations: int = 0
    activation_failures: int = 0
    passivations: int = 0
    crashes: int = 0
    dead_letters: int = 0
    dropped: int = 0
    rejected_stopping: int = 0
    endpoints: dict[str, list[Any]] = field(default_factory=dict)

    def record(self, endpoint: str, elapsed_ns: int, error: BaseException | None) -> None:
        entry = self.endpoints.get(endpoint)
        if entry is None:
            entry = self.endpoints[endpoint] = [0, 0, "", 0]
        entry[0] += 1
        entry[3] += elapsed_ns
        if error is not None:
            entry[1] += 1
            entry[2] = f"{type(error).__name__}: {error}"


@final
class ActorRuntime:
    """One actor type in this process (create through :meth:`ActorSystem.start`)."""

    def __init__(
        self,
        cls: type[Actor],
        client: Client,
        *,
        factory: Callable[[], Actor] | None = None,
        clock: Clock | None = None,
        reminders: ReminderStore | None = None,
        on_escalation: Callable[[ActorRuntime, Escalation], object] | None = None,
        rand: Callable[[], float] = random.random,
        queue: str | None = None,
        instance_id: str = "",
    ) -> None:
        self.cls = cls
        self.spec: ActorSpec = cls.spec()
        self.client = client
        self.clock: Clock = clock or SystemClock()
        self.rand = rand
        self.queue = queue if queue is not None else self.spec.queue
        self.instance_id = instance_id
        self._factory: Callable[[], Actor] = factory or cls
        self.reminders = reminders
        self._on_escalation = on_escalation
        self.dispatcher = Dispatcher(cls)
        self.default_receive = cls.receive is Actor.receive
        self.activations: OrderedDict[str, Activation] = OrderedDict()
        self.stats = _Counters()
        self.tracker = RestartTracker(self.spec.policy, rand)
        self.running = False
        self.accepting = False
        self.failed: Escalation | None = None
        self.started = ""
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._service_tasks: list[asyncio.Task[None]] = []
        self._due: list[tuple[float, str, str]] = []
        self._scheduled: dict[tuple[str, str], Reminder] = {}
        self._wake = asyncio.Event()
        self._lingering: dict[str, Activation] = {}  # insertion order = age
        self.linger_cap = LINGER_CAP

    def __repr__(self) -> str:
        return f"<ActorRuntime {self.spec.name} {self.spec.subject!r} keys={len(self.activations)}>"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe and begin serving. Raises what ``subscribe`` raises (e.g. Forbidden)."""
        self.running = True
        self.accepting = True
        self.failed = None
        self.started = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self.linger_cap = LINGER_CAP
        self._sub = await self.client.subscribe(
            self.spec.subject, queue=self.queue, dispatch=self._route, max_buffer=self.spec.max_buffer
        )
        if self.spec.idle is not None:
            self._service_tasks.append(asyncio.get_running_loop().create_task(self._reap_idle()))
        if self.reminders is not None:
            for reminder in await self.reminders.load(self.spec.name):
                self._schedule(reminder)
            self._service_tasks.append(asyncio.get_running_loop().create_task(self._run_reminders()))

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: drain intake, finish turns until ``timeout``, answer the rest, deactivate.

        Callers never hang: every request this type accepted gets its reply or a 503 error.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.drain(max(0.1, deadline - loop.time()))
            except ConatError as e:
                log.warning("%s: draining intake failed: %s", self.spec.name, e)
                await sub.unsubscribe()
        self.accepting = False
        self.linger_cap = 0
        self._release_lingering()
        await self._cancel(self._service_tasks)
        for act in list(self.activations.values()):
            for timer in list(act.timers):
                timer.cancel()
        pending = {a.task for a in self.activations.values() if a.task is not None}
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        await self._halt()
        live = [a for a in self.activations.values() if a.state is State.ACTIVE]
        if live:
            deactivations = [loop.create_task(a.deactivate()) for a in live]
            _, late = await asyncio.wait(deactivations, timeout=max(0.0, deadline - loop.time()))
            await self._cancel(list(late))
        self.activations.clear()
        await self._cancel(list(self._tasks))

    async def abort(self) -> None:
        """Hard stop after an escalation: unsubscribe, cancel every turn, answer what is queued."""
        sub, self._sub = self._sub, None
        self.accepting = False
        if sub is not None:
            await sub.unsubscribe()
        await self._cancel(self._service_tasks)
        await self._halt()
        self.activations.clear()

    async def _halt(self) -> None:
        """Stop running turns: cancel the running ones and answer everything queued with 503."""
        self.running = False
        running = [a.task for a in self.activations.values() if a.task is not None]
        for act in self.activations.values():
            act._cancel_timers()
        await self._cancel(running)
        for act in self.activations.values():
            self.stats.rejected_stopping += act.reject_queued(
                STOPPING, f"actor {self.spec.name} is stopping"
            )

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
        """Cancel ``tasks`` (never the caller's own) and wait for them; empties the list."""
        current = asyncio.current_task()
        doomed = [t for t in tasks if t is not current]
        tasks.clear()
        for task in doomed:
            task.cancel()
        if doomed:
            await asyncio.gather(*doomed, return_exceptions=True)

    def spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- routing ---------------------------------------------------------------------------
    def _route(self, msg: Message) -> None:
        """Called from the read loop for each message: put it in its key's mailbox, never wait."""
        if not self.accepting:
            if msg.reply:
                self.stats.rejected_stopping += 1
                self.spawn(respond_error(msg, STOPPING, f"actor {self.spec.name} is stopping"))
            return
        key = self.spec.key_of(msg.subject)
        chain = msg.header(CHAIN_HEADER)
        if chain is not None:
            why = refusal(parse(chain), f"{self.spec.name}/{key}")
            if why is not None:
                if msg.reply:
                    self.spawn(respond_error(msg, LOOP_DETECTED, why))
                return
        activations = self.activations
        act = activations.get(key)
        now = self.clock.now()
        if act is None:
            act = activations[key] = Activation(self, key, now)
            cap = self.spec.max_active
            if cap is not None and len(activations) > cap:
                self._evict_one()
        else:
            activations.move_to_end(key)
        act.last_used = now
        if not act.mailbox.put(msg):
            self.stats.dropped += 1
            if msg.reply:
                self.client._reply_busy(msg.reply, f"actor {self.spec.name} key {key!r} mailbox is full")
            return
        self.wake(act)

    def wake(self, act: Activation) -> None:
        """Make sure something will run ``act``'s queued turns: its lingering task or a new one."""
        waiter = act.waiter
        if waiter is not None:
            act.waiter = None
            self._lingering.pop(act.key, None)
            waiter.set_result(True)
        elif act.task is None:
            self.ensure_running(act)

    def ensure_running(self, act: Activation) -> None:
        if act.task is None and self.running:
            act.task = asyncio.get_running_loop().create_task(act.run())

    async def linger(self, act: Activation) -> bool:
        """Wait for ``act``'s next turn; False when it must let its task end instead (the bounded
        set of lingering keys is full and it is the oldest, or the runtime is stopping)."""
        if self.linger_cap <= 0:
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        act.waiter = waiter
        lingering = self._lingering
        lingering[act.key] = act
        if len(lingering) > self.linger_cap:
            oldest = lingering.pop(next(iter(lingering)))
            if oldest.waiter is not None:
                oldest.waiter.set_result(False)
                oldest.waiter = None
        try:
            return await waiter
        finally:
            if act.waiter is waiter:
                act.waiter = None
                lingering.pop(act.key, None)

    def _release_lingering(self) -> None:
        while self._lingering:
            act = self._lingering.pop(next(iter(self._lingering)))
            if act.waiter is not None:
                act.waiter.set_result(False)
                act.waiter = None

    def settled(self, act: Activation) -> None:
        """An activation's task ended: forget the key if it is inactive and has nothing queued."""
        if act.mailbox and self.running:
            self.ensure_running(act)
        elif act.state is State.INACTIVE and self.activations.get(act.key) is act:
            del self.activations[act.key]

    def new_instance(self, act: Activation) -> Actor:
        instance = self._factory()
        if not isinstance(instance, self.cls):
            raise TypeError(f"factory of {self.spec.name} returned {type(instance).__name__}")
        instance.key = act.key
        instance._activation = act
        return instance

    def _evict_one(self) -> None:
        """Passivate the least recently used idle key (LRU cap on active keys)."""
        for act in self.activations.values():
            if act.idle and act.state is State.ACTIVE:
                act.enqueue_internal(PASSIVATE)
                return

    async def _reap_idle(self) -> None:
        idle = self.spec.idle
        assert idle is not None
        interval = min(_MAX_SCAN, max(_MIN_SCAN, idle / 4))
        clock = self.clock
        while True:
            await clock.sleep_until(clock.now() + interval)
            now = clock.now()
            for act in list(self.activations.values()):
                if now - act.last_used < idle:
                    break
                if act.idle and act.state is State.ACTIVE:
                    act.enqueue_internal(PASSIVATE)

    # -- supervision -----------------------------------------------------------------------
    def child_crashed(self, act: Activation, error: BaseException) -> None:
        decision = self.tracker.crashed(self.clock.now())
        if isinstance(decision, Escalate):
            escalation = Escalation(f"actor {self.spec.name}", decision.restarts, decision.within, error)
            escalation.__cause__ = error
            self.failed = escalation
            self.accepting = False
            log.error("%s", escalation)
            if self._on_escalation is not None:
                self._on_escalation(self, escalation)

    def dead_letter(self, key: str, msg: Message, error: BaseException) -> None:
        self.stats.dead_letters += 1
        why = f"{type(error).__name__}: {error}"
        letter = DeadLetter(self.spec.name, key, msg.subject, why, msg.raw, msg.headers)
        log.error("%s/%r: dead-lettered a message on %s (%s)", self.spec.name, key, msg.subject, why)
        self.spawn(self._send_dead_letter(letter, msg, why))

    async def _send_dead_letter(self, letter: DeadLetter, msg: Message, why: str) -> None:
        try:
            await self.client.publish(self.spec.dead_letter, letter)
        except ConatError as e:
            log.error("%s: could not publish a dead letter: %s", self.spec.name, e)
        await respond_error(msg, ACTIVATION_FAILED, f"activation of {letter.key!r} failed: {why}")

    # -- reminders -------------------------------------------------------------------------
    async def set_reminder(self, key: str, name: str, delay: float, period: float | None) -> None:
        if self.reminders is None:
            raise ConatError("reminders need a ReminderStore (ActorSystem(reminders=...))")
        if delay < 0 or (period is not None and period <= 0):
            raise ValueError("a reminder needs delay >= 0 and period > 0")
        reminder = Reminder(self.spec.name, key, name, self.clock.wall() + delay, period)
        await self.reminders.save(reminder)
        self._schedule(reminder)

    async def cancel_reminder(self, key: str, name: str) -> None:
        if self.reminders is not None:
            await self.reminders.delete(self.spec.name, key, name)
        self._scheduled.pop((key, name), None)

    def _schedule(self, reminder: Reminder) -> None:
        self._scheduled[(reminder.key, reminder.name)] = reminder
        heapq.heappush(self._due, (reminder.due, reminder.key, reminder.name))
        self._wake.set()

    async def _run_reminders(self) -> None:
        clock = self.clock
        while True:
            self._wake.clear()
            while self._due and self._due[0][0] <= clock.wall():
                due, key, name = heapq.heappop(self._due)
                reminder = self._scheduled.get((key, name))
                if reminder is None or reminder.due != due:
                    continue  # cancelled or replaced
                await self._fire(reminder)
            if self._due:
                sleeper = asyncio.ensure_future(
                    clock.sleep_until(clock.now() + (self._due[0][0] - clock.wall()))
                )
            else:
                sleeper = asyncio.ensure_future(asyncio.sleep(3600))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    async def _fire(self, reminder: Reminder) -> None:
        key = reminder.key
        act = self.activations.get(key)
        if act is None:
            act = self.activations[key] = Activation(self, key, self.clock.now())
        act.enqueue_internal(_Call("reminder", reminder=reminder.name))
        if reminder.period is None:
            self._scheduled.pop((key, reminder.name), None)
            if self.reminders is not None:
                await self.reminders.delete(self.spec.name, key, reminder.name)
        else:
            following = msgspec.structs.replace(reminder, due=reminder.due + reminder.period)
            if self.reminders is not None:
                await self.reminders.save(following)
            self._schedule(following)

    # -- statistics ------------------------------------------------------------------------
    def statistics(self) -> ActorStatistics:
        s = self.stats
        endpoints = tuple(
            EndpointStatistics(name, n, errors, last, ns)
            for name, (n, errors, last, ns) in sorted(s.endpoints.items())
        )
        return ActorStatistics(
            name=self.spec.name,
            subject=self.spec.subject,
            queue=self.queue,
            started=self.started,
            active_keys=sum(1 for a in self.activations.values() if a.state is State.ACTIVE),
            running_keys=sum(1 for a in self.activations.values() if a.task is not None and a.waiter is None),
            buffered=sum(len(a.mailbox) for a in self.activations.values()),
            activations=s.activations,
            activation_failures=s.activation_failures,
            passivations=s.passivations,
            crashes=s.crashes,
            restarts=self.tracker.total,
            dead_letters=s.dead_letters,
            dropped=s.dropped,
            rejected_stopping=s.rejected_stopping,
            endpoints=endpoints,
        )

    def mailbox_statistics(self, key: str) -> MailboxStatistics | None:
        act = self.activations.get(key)
        return None if act is None else act.mailbox.statistics()
