"""One actor type running in one process: intake, routing to keys, passivation, supervision, stop.

The type subscribes once to its pattern (with its queue group, if any). The subscription's
``dispatch`` hook routes each message synchronously from the connection's read loop into the
key's bounded mailbox, so the bus never waits on an actor and a full mailbox is answered (429) at
once. The type is the supervisor of its activations: every activation crash counts against the
restart intensity of :class:`RestartPolicy`; exceeding it escalates to the parent (the
:class:`ActorSystem`), which restarts the whole type or gives up.

Stopping is graceful (:meth:`ActorRuntime.stop`): intake is drained (the server stops routing here;
what it routed before still arrives), in-flight and queued turns run until the deadline, what is
left is cancelled and answered with 503, and the remaining activations are deactivated. Every
request a type took gets an answer, whatever its key was doing (running a turn, activating,
waiting out a restart backoff, deactivating): an activation with messages queued is never
forgotten, and the 503 replies are sent before stop returns.

A key whose activation crashed keeps its restart state (the backoff sequence and the time before
which it may not activate) after its record is dropped, until that backoff has run out
(``RestartPolicy.reset_after`` without a crash): so a key that crashes on every request, whose
mailbox is empty at each crash, still backs off exponentially instead of reactivating at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, final

import msgspec

from conat import (
    BAD_REQUEST,
    UNAVAILABLE,
    BackoffSequence,
    Client,
    Clock,
    ConatError,
    Dispatcher,
    EndpointStatistics,
    Message,
    MicroService,
    Subscription,
    SystemClock,
    error_reply,
    respond_error,
)

from ._activation import PASSIVATE, Activation, State, _Call
from ._actor import Actor, ActorSpec
from ._chain import CHAIN_HEADER, parse, refusal
from ._errors import LOOP_DETECTED, ActivationFailed, Escalation
from ._mailbox import MailboxStatistics
from ._partitions import (
    PROBE_HEADER,
    Partitions,
    ProbeAnswer,
    partition_of,
    partition_subject,
    split_partition_subject,
)
from ._policy import Escalate, RestartTracker
from ._reminders import Reminder, ReminderStore

__all__ = ["ActorRuntime", "ActorStatistics", "DeadLetter"]

log = logging.getLogger("conat.actors")

A = TypeVar("A", bound=Actor)
T = TypeVar("T")
_MIN_SCAN: Final = 0.05
LINGER_CAP: Final = 256
"""How many idle keys may keep their task waiting for the next message."""
_MAX_SCAN: Final = 60.0
MAX_RESTART_STATES: Final = 10_000
"""Keys whose restart state is kept after their record was dropped (a bound; crashes escalate
long before it is reached under the default policy)."""
REPLY_GRACE: Final = 1.0
"""Seconds stop() waits, past its deadline, for the 503 replies it queued to be sent."""


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
    bad_requests: int
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
        partitions: Partitions | None = None,
    ) -> None:
        self.cls = cls
        self.partitions = partitions
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
        self.handles_now = cls.handle_now is not Actor.handle_now
        self.activations: OrderedDict[str, Activation] = OrderedDict()
        self.stats = _Counters()
        self.tracker = RestartTracker(self.spec.policy, rand)
        self.running = False
        self.accepting = False
        self.failed: Escalation | None = None
        spec = self.spec
        self.micro = MicroService(
            spec.name,
            spec.subject,
            list(self.dispatcher.endpoints) if self.default_receive else ["receive"],
            version=spec.version,
            description=spec.description or (cls.__doc__ or "").strip().split("\n")[0],
            metadata={"conat.actor": cls.__qualname__, "conat.keyed": str(spec.keyed).lower()},
            queue_group=self.queue or "",
            service_id=f"{instance_id}-{spec.name}" if instance_id else None,
            data=self._figures,
        )
        """The type in ``$SRV`` discovery, and its per-endpoint figures."""
        self._restart_states: dict[str, tuple[BackoffSequence, float]] = {}
        self._subscriptions: list[Subscription] = []
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
    @property
    def started(self) -> str:
        """When the type (re)started serving, RFC 3339."""
        return self.micro.started

    async def start(self) -> None:
        """Begin serving: load the type's reminders, then subscribe.

        All or nothing: if it raises (the reminder store's ``load``, ``subscribe``'s
        :class:`Forbidden`...) or is cancelled, nothing is subscribed and nothing runs, so a
        retried start serves once.
        """
        if self._subscriptions:
            raise ConatError(f"actor {self.spec.name} is already serving")
        reminders = await self.reminders.load(self.spec.name) if self.reminders is not None else []
        self.running = True  # before subscribing: the first message may come before it returns
        self.accepting = True
        self.failed = None
        self.linger_cap = LINGER_CAP
        subs: list[Subscription] = []
        try:
            for subject in self.subjects():
                sub = await self.client.subscribe(
                    subject,
                    queue=self.queue,
                    dispatch=self._route,
                    max_buffer=self.spec.max_buffer,
                    cluster_wide=True,  # on a cluster: callers on every node reach it once it serves
                )
                subs.append(sub)
        except BaseException:
            self.accepting = False
            for sub in subs:
                with contextlib.suppress(ConatError):
                    await sub.unsubscribe()
            await self._halt()  # anything routed meanwhile is answered (503)
            self.activations.clear()
            raise
        # nothing below awaits or can fail: the type serves from here on
        self._subscriptions = subs
        self.micro.reset_started()
        loop = asyncio.get_running_loop()
        if self.spec.idle is not None:
            self._service_tasks.append(loop.create_task(self._reap_idle()))
        if self.reminders is not None:
            self._scheduled.clear()
            self._due.clear()
            for reminder in reminders:
                self._schedule(reminder)
            self._service_tasks.append(loop.create_task(self._run_reminders()))

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: drain intake, finish turns until ``timeout``, answer the rest, deactivate.

        Callers never hang: every request this type accepted gets its reply or a 503 error.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        subs, self._subscriptions = self._subscriptions, []
        for sub in subs:
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
        await self._finish_replies(max(REPLY_GRACE, deadline - loop.time()))

    async def _finish_replies(self, timeout: float) -> None:
        """Let the replies already queued (503s, dead-letter answers) go out, then cancel what is
        left: a reply task cancelled before it ran would leave its caller waiting."""
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            await self._cancel(list(late))

    async def abort(self) -> None:
        """Hard stop after an escalation: unsubscribe, cancel every turn, answer what is queued."""
        subs, self._subscriptions = self._subscriptions, []
        self.accepting = False
        for sub in subs:
            with contextlib.suppress(ConatError):
                await sub.unsubscribe()
        await self._cancel(self._service_tasks)
        await self._halt()
        self.activations.clear()

    async def _halt(self) -> None:
        """Stop running turns: cancel the running ones and answer everything queued with 503.

        Every activation is answered for, including one whose task ends while it is cancelled
        (activating, backing off, deactivating): the list is taken before cancelling.
        """
        self.running = False
        acts = list(self.activations.values())
        for act in acts:
            act._cancel_timers()
        await self._cancel([a.task for a in acts if a.task is not None])
        why = f"actor {self.spec.name} is stopping"
        for act in acts:
            self.stats.rejected_stopping += act.reject_queued(UNAVAILABLE, why)

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
    def subjects(self) -> list[str]:
        """What the type subscribes to: its pattern, or the subjects of the partitions it owns."""
        parts = self.partitions
        if parts is None:
            return [self.spec.subject]
        return [partition_subject(self.spec.subject, parts.count, i) for i in parts.owned]

    def _route(self, msg: Message) -> None:
        """Called from the read loop for each message: put it in its key's mailbox, never wait."""
        parts = self.partitions
        if parts is not None:
            index, msg.subject = split_partition_subject(msg.subject)  # actors see it as published
        if msg.reply and msg.header(PROBE_HEADER) is not None:
            self.spawn(self._answer_probe(msg))
            return
        if not self.accepting:
            if msg.reply:
                self.stats.rejected_stopping += 1
                self.spawn(respond_error(msg, UNAVAILABLE, f"actor {self.spec.name} is stopping"))
            return
        key = self.spec.key_of(msg.subject)
        if parts is not None and partition_of(key, parts.count) != index:
            # sent to the partition subject straight, not through the bus's mapping: another
            # partition owns the key, and one key is only ever served by one owner
            if msg.reply:
                wrong = f"key {key!r} of {self.spec.name} is not of partition {index} of {parts.count}"
                self.spawn(respond_error(msg, BAD_REQUEST, wrong))
            return
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
            act = self._activation(key, now)
            cap = self.spec.max_active
            if cap is not None and len(activations) > cap:
                self._evict_one()
        else:
            activations.move_to_end(key)
        act.last_used = now
        if self._may_handle_now(act) and self._handle_now(act, msg):
            return
        if not act.mailbox.put(msg):
            self.stats.dropped += 1
            if msg.reply:
                msg.respond_busy(f"actor {self.spec.name} key {key!r} mailbox is full")
            return
        self.wake(act)

    def _may_handle_now(self, act: Activation) -> bool:
        """Whether a message to ``act`` may take the fast path: the type has one, and the key is
        active with nothing queued, no turn running and no passivation asked for."""
        return self.handles_now and act.state is State.ACTIVE and act.idle and not act.passivate_requested

    def _handle_now(self, act: Activation, msg: Message) -> bool:
        """Offer ``msg`` to the instance's synchronous fast path (:meth:`Actor.handle_now`)."""
        instance = act.instance
        assert instance is not None
        started = time.perf_counter_ns()
        endpoint = None if self.default_receive else "receive"
        try:
            taken = instance.handle_now(msg)
        except Exception as e:
            if not isinstance(e, ConatError):
                log.exception("%s/%r: handle_now failed on %s", self.spec.name, act.key, msg.subject)
            if endpoint is not None:
                self.micro.record(endpoint, time.perf_counter_ns() - started, e)
            if msg.reply:
                self.spawn(respond_error(msg, *error_reply(e)))
            return True
        if taken and endpoint is not None:
            self.micro.record(endpoint, time.perf_counter_ns() - started, None)
        return taken

    async def _answer_probe(self, msg: Message) -> None:
        """Answer a partition probe (:mod:`actors._partitions`): which partitions this runtime owns."""
        parts = self.partitions
        answer = ProbeAnswer(self.instance_id, None if parts is None else parts.count,
                             [] if parts is None else list(parts.owned))  # fmt: skip
        with contextlib.suppress(ConatError):
            await msg.respond(msgspec.json.encode(answer), encoding="raw")

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
        """An activation's task ended: forget the key if it is inactive and has nothing queued.

        A record with messages queued is kept (and run again, unless stopping: then stop or
        abort answers them); a dropped record's restart state is kept until its backoff ran out.
        """
        if act.mailbox:
            if self.running:
                self.ensure_running(act)
            return
        if act.state is State.INACTIVE and self.activations.get(act.key) is act:
            del self.activations[act.key]
            if act.backoff is not None:
                self._keep_restart_state(act)

    def _activation(self, key: str, now: float) -> Activation:
        """A new record for ``key``, with the restart state it left behind, if still running."""
        act = self.activations[key] = Activation(self, key, now)
        kept = self._restart_states.pop(key, None)
        if kept is not None and not kept[0].expired(now):
            act.backoff, act.not_before = kept
        return act

    def _keep_restart_state(self, act: Activation) -> None:
        backoff = act.backoff
        assert backoff is not None
        now = self.clock.now()
        if backoff.expired(now):
            return
        states = self._restart_states
        states[act.key] = (backoff, act.not_before)
        # oldest first: forget what ran out, and stay within the bound
        while states:
            oldest = next(iter(states))
            if len(states) <= MAX_RESTART_STATES and not states[oldest][0].expired(now):
                break
            del states[oldest]

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
        await respond_error(msg, *error_reply(ActivationFailed(letter.key, why)))

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
            act = self._activation(key, self.clock.now())
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
            bad_requests=self.micro.bad_requests,
            endpoints=self.micro.endpoint_statistics(),
        )

    def _figures(self) -> dict[str, int]:
        """The type's figures in every endpoint's ``data`` of ``$SRV.STATS``."""
        stats = self.statistics()
        return {
            "active_keys": stats.active_keys,
            "running_keys": stats.running_keys,
            "buffered": stats.buffered,
            "activations": stats.activations,
            "activation_failures": stats.activation_failures,
            "passivations": stats.passivations,
            "crashes": stats.crashes,
            "restarts": stats.restarts,
            "dead_letters": stats.dead_letters,
            "dropped": stats.dropped,
            "rejected_stopping": stats.rejected_stopping,
        }

    def mailbox_statistics(self, key: str) -> MailboxStatistics | None:
        act = self.activations.get(key)
        return None if act is None else act.mailbox.statistics()
