"""The asyncio plumbing under a :class:`~conat._socket.Socket`: an ordered writer, one timer, waits.

The socket's protocol (:mod:`conat._socket_protocol`) is pure; a socket drives it with three parts:

- :class:`Outbox` publishes encoded frames in order, with at most one writer at a time. A publish
  that fails drops the rest of the queue: the protocol retransmits what matters.
- :class:`Answers` is the listener's best-effort writer for frames to connections it does not
  hold (``Reset``, a repeated ``Close``): one writer, a bounded queue, and what does not fit is
  dropped and counted, so a flood of stray frames costs bounded memory and no task per frame.
- :class:`Alarm` is a single re-armable wake-up on any :class:`~conat._clock.Clock`: a
  ``loop.call_at`` handle on the system clock (no task), a task sleeping on the clock otherwise.
- :class:`Waits` holds the futures that wait for "something changed" (each waiter re-checks its
  condition when woken) and the deadlines that expire futures with :class:`~conat._errors.DeadlinePassed`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, final

from ._clock import Clock, SystemClock
from ._errors import ConatError, DeadlinePassed
from ._queue import BoundedQueue
from ._socket_frames import FRAME_ENCODER, Frame

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["DEFAULT_MAX_ANSWERS", "Alarm", "Answers", "Outbox", "Spawn", "Waits"]

log = logging.getLogger("conat.socket")

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]
"""Starts a task that its owner tracks (and awaits when it closes)."""

DEFAULT_MAX_ANSWERS: Final = 1024
"""Answers a listener queues before it drops new ones (each is one small frame)."""


@final
class Outbox:
    """Encoded frames waiting to be published to ``target`` (with ``reply``), in order.

    :meth:`emit` (from synchronous code) starts a writer task if none runs; :meth:`write` (from a
    coroutine) sends from the calling task unless a writer is already at it. A writer cancelled
    mid-queue hands the rest to a new writer task, so frames are never stranded.
    """

    def __init__(
        self, client: Client, target: str, name: str, spawn: Spawn, on_closed: Callable[[], None]
    ) -> None:
        self._client = client
        self.target = target
        self.reply = ""
        self._name = name
        self._spawn = spawn
        self._on_closed = on_closed
        self._frames: deque[bytes] = deque()
        self._writing = False

    def emit(self, frames: list[Frame]) -> None:
        """Queue frames and make sure a writer sends them."""
        self._frames.extend(map(FRAME_ENCODER.encode, frames))
        if not self._writing:
            self._writing = True
            self._spawn(self._writer())

    async def write(self, frames: list[Frame]) -> None:
        """Queue frames and send them from the calling task, unless a writer is already at it.

        This is :meth:`_writer`'s loop, inlined: every ``Socket.send`` comes here, and a coroutine
        less per message is worth the repetition.
        """
        out = self._frames
        encode = FRAME_ENCODER.encode
        for frame in frames:
            out.append(encode(frame))
        if self._writing:
            return
        self._writing = True
        await self._writer()

    async def _writer(self) -> None:
        """Send the queue in order. The caller has set ``_writing``; this clears it."""
        out = self._frames
        client = self._client
        publish = client._core.transport.publish
        target, reply = self.target, self.reply
        try:
            while out:
                await publish(target, out.popleft(), reply)
        except ConatError as e:
            self._lost(e)
        finally:
            self._writing = False
            if out and not client._core.closing:  # cancelled mid-queue: a new writer takes the rest
                self._writing = True
                self._spawn(self._writer())

    def _lost(self, error: ConatError) -> None:
        # ClosedError: the bus client is gone. ConnectError: its outbound buffer is full while
        # reconnecting. Either way what was lost is retransmitted (or no longer matters).
        self._frames.clear()
        log.debug("socket %r: frames not sent: %s", self._name, error)
        if self._client._core.closing:
            self._on_closed()


@final
class Answers:
    """Frames for many reply subjects, sent in order by one writer task; at most ``limit`` wait.

    For answers that are worth sending but not worth keeping: the peer's next frame is answered
    again. :meth:`emit` never blocks and never spawns more than one task; when ``limit`` frames
    already wait it drops the new one and counts it in ``dropped`` (a :class:`BoundedQueue` holds
    them). ``task`` is the running writer (None when idle), for its owner to await when it closes.
    """

    def __init__(self, client: Client, name: str, spawn: Spawn, limit: int = DEFAULT_MAX_ANSWERS) -> None:
        self._client = client
        self._name = name
        self._spawn = spawn
        self._frames: BoundedQueue[tuple[str, bytes]] = BoundedQueue(limit)
        self.task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def dropped(self) -> int:
        return self._frames.dropped

    def emit(self, target: str, frame: Frame) -> bool:
        """Queue ``frame`` for ``target``; False if it was dropped (the queue is full)."""
        if not self._frames.put((target, FRAME_ENCODER.encode(frame))):
            return False
        if self.task is None:
            self.task = self._spawn(self._writer())
        return True

    async def _writer(self) -> None:
        frames = self._frames
        publish = self._client._core.transport.publish
        try:
            while (item := frames.pop()) is not None:
                target, raw = item
                try:
                    await publish(target, raw, "")
                except ConatError as e:
                    log.debug("socket server %r: frame not sent: %s", self._name, e)
                    if self._client._core.closing:
                        frames.clear()
        finally:
            self.task = None
            if frames and not self._client._core.closing:  # cancelled mid-queue: a new writer takes the rest
                self.task = self._spawn(self._writer())


@final
class Alarm:
    """One wake-up at a time on ``clock``: calls ``fire()`` at (or just after) the armed time.

    Arming for a time later than the one pending does nothing: the earlier wake-up's ``fire()`` is
    expected to re-arm for whatever is next. ``at`` is the pending time (None: disarmed).
    """

    def __init__(self, clock: Clock, fire: Callable[[], None], spawn: Spawn) -> None:
        self._clock = clock
        self._fire = fire
        self._spawn = spawn
        self._loop = asyncio.get_running_loop()
        self._system_time = isinstance(clock, SystemClock)
        self.at: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        """The sleeping task, on any clock but the system's."""

    def arm(self, deadline: float) -> None:
        if self._system_time:
            handle = self._handle
            if handle is not None:
                if self.at is not None and self.at <= deadline:
                    return  # an earlier wake-up re-arms for this one
                handle.cancel()
            now = self._loop.time()
            self.at = deadline = max(deadline, now)
            self._handle = self._loop.call_at(deadline, self._on_system_timer)
            return
        task = self.task
        if task is not None and not task.done():
            if task is asyncio.current_task():
                self.at = deadline  # the timer loop is running: it picks this up
                return
            if self.at is not None and self.at <= deadline:
                return
            task.cancel()
        self.at = deadline
        self.task = self._spawn(self._clock_timer())

    def disarm(self) -> None:
        self.at = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task = self.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            self.task = None

    def _on_system_timer(self) -> None:
        self._handle = None
        self.at = None
        self._fire()

    async def _clock_timer(self) -> None:
        """The timer for any clock but the system's: sleep on the clock, fire, repeat."""
        clock = self._clock
        me = asyncio.current_task()
        try:
            while (at := self.at) is not None and self.task is me:
                await clock.sleep_until(at)
                if self.task is not me:
                    return
                if self.at is not None and clock.now() >= self.at:
                    self.at = None
                    self._fire()
        finally:
            if self.task is me:
                self.task = None


@final
class Waits:
    """Futures waiting for a change, and deadlines (on the owner's clock) that expire futures.

    :meth:`notify` wakes every waiter, which then re-checks what it waits for (``waiters`` is
    non-empty while someone waits: the read path checks it per frame, without a call). The owner's timer
    calls :meth:`expire`, which fails each pending future whose deadline has passed with
    :class:`DeadlinePassed`; :meth:`earliest` says when that timer is next needed.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.waiters: list[asyncio.Future[None]] = []
        self._deadlines: list[tuple[float, int, asyncio.Future[Any]]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self.waiters)

    def waiter(self) -> asyncio.Future[None]:
        """A future that :meth:`notify` resolves."""
        future: asyncio.Future[None] = self._loop.create_future()
        self.waiters.append(future)
        return future

    def notify(self) -> None:
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def add_deadline(self, deadline: float, future: asyncio.Future[Any], others: int = 0) -> None:
        """Fail ``future`` with :class:`DeadlinePassed` at ``deadline`` if it is still pending then.

        ``others`` counts the futures with deadlines that are not waiters (they bound the heap:
        it is swept of finished entries when it grows past four times the live ones).
        """
        dl = self._deadlines
        if len(dl) > 64 and len(dl) > 4 * (others + len(self.waiters)):
            dl[:] = [e for e in dl if not e[2].done()]
            heapq.heapify(dl)
        heapq.heappush(dl, (deadline, next(self._order), future))

    def earliest(self) -> float | None:
        """The first deadline of a pending future (None: none)."""
        dl = self._deadlines
        while dl and dl[0][2].done():
            heapq.heappop(dl)
        return dl[0][0] if dl else None

    def expire(self, now: float) -> None:
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            _, _, future = heapq.heappop(dl)
            if not future.done():
                future.set_exception(DeadlinePassed())
