"""Partition workers: N child processes, each owning one partition of some keyed actor types.

One Python process is one interpreter, so it uses one core. A partitioned service runs N worker
processes instead, worker ``i`` owning partition ``i`` of ``N`` (:mod:`actors._partitions`: the bus
splits the keys with a subject mapping). ``conat run --partitions N`` and ``conat persist serve
--workers N`` (and ``conat up --workers N``) both run their workers with :class:`Workers`; each names
the command of a worker (:data:`WorkerCommand`).

:class:`Workers` keeps them running: a worker that exits while the others serve is started again
(after a backoff that grows while it keeps failing); meanwhile its partition answers 503 and its
callers retry (``wait_for_interest``). Stopping sends every worker SIGTERM (each answers what it
took, then stops) and waits for them; one still running after the grace is killed. Workers die with
their parent however it dies (:func:`conat.die_with_parent`).

:func:`serving_workers` starts them and returns once every partition answers through the bus
(:func:`wait_for_partitions`), so a supervisor says "ready" only when it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

import click

from conat import Backoff, BackoffSequence, Client, die_with_parent
from conat.cli.plugin import Options

from ._partitions import Partitions, wait_for_partitions

__all__ = [
    "WORKER_BACKOFF",
    "WORKERS_STARTUP",
    "WorkerCommand",
    "Workers",
    "serving_workers",
    "worker_options",
]

log = logging.getLogger("conat.actors.workers")

WorkerCommand = Callable[[int, int], Sequence[str]]
"""``command(index, count)``: the argv of worker ``index`` of ``count`` (it serves that partition)."""

WORKER_BACKOFF: Final = Backoff(initial=0.2, maximum=10.0, jitter=0.5)
"""Between restarts of a worker that keeps exiting."""
WORKERS_STARTUP: Final = 60.0
"""How long workers may take until every partition is served (:func:`serving_workers`)."""
_STEADY: Final = 30.0
"""A worker that ran this long before it exited is restarted at once (its backoff starts over)."""


def partition_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Partitions | None:
    """The click callback of a ``--partition I/N`` option (``conat run``, ``conat persist serve``)."""
    if value is None:
        return None
    try:
        return Partitions.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def worker_options(client: Client, opts: Options) -> list[str]:
    """The global options a worker is started with: the URL its parent connected to (so every
    worker is on the same server), the parent's credentials file, and ``--json``."""
    args = ["--url", client.connected_url or opts.url or ""]
    if opts.credentials:
        args += ["--credentials", opts.credentials]
    if opts.json:
        args.append("--json")
    return args


class Workers:
    """``count`` worker processes kept running until :meth:`stop` (module docstring); ``quiet``
    sends their output lines to /dev/null (their errors still go to stderr); ``what`` names them in
    the log."""

    def __init__(
        self,
        count: int,
        command: WorkerCommand,
        *,
        stop_timeout: float,
        quiet: bool = False,
        what: str = "worker",
    ) -> None:
        if count < 1:
            raise ValueError(f"count: want at least one worker, got {count!r}")
        self.count = count
        self._command = command
        self._stdout = asyncio.subprocess.DEVNULL if quiet else None
        self._stop_timeout = stop_timeout
        self._what = what
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = False
        self.restarts = 0

    async def start(self) -> None:
        """Start every worker (each keeps itself running until :meth:`stop`)."""
        loop = asyncio.get_running_loop()
        for index in range(self.count):
            await self._spawn(index)
            self._keepers.append(loop.create_task(self._keep(index), name=f"{self._what} {index}"))

    @property
    def pids(self) -> list[int]:
        return [p.pid for _, p in sorted(self._procs.items())]

    async def _spawn(self, index: int) -> None:
        cmd = die_with_parent(list(self._command(index, self.count)))
        self._procs[index] = await asyncio.create_subprocess_exec(*cmd, stdout=self._stdout)

    async def _keep(self, index: int) -> None:
        delays = BackoffSequence(WORKER_BACKOFF)
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            code = await self._procs[index].wait()
            if self._stopping:
                return
            if loop.time() - started > _STEADY:
                delays.reset()
            delay = delays.next_delay(loop.time())
            log.warning("%s %d of %d exited (%s); starting it again in %.1f s",
                        self._what, index, self.count, code, delay)  # fmt: skip
            await asyncio.sleep(delay)
            if not self._stopping:
                await self._spawn(index)
                self.restarts += 1

    async def wait(self) -> None:
        """Return when every worker keeper ended (only after :meth:`stop`)."""
        await asyncio.gather(*self._keepers, return_exceptions=True)

    async def stop(self) -> None:
        """SIGTERM every worker, wait for them (up to the stop timeout and 5 s more), kill the rest."""
        self._stopping = True
        for keeper in self._keepers:
            keeper.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        procs = [p for p in self._procs.values() if p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        if waits:
            await asyncio.wait(waits, timeout=self._stop_timeout + 5.0)
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*waits, return_exceptions=True)


@contextlib.asynccontextmanager
async def serving_workers(
    client: Client,
    workers: Workers,
    types: Sequence[tuple[str, object]],
    timeout: float = WORKERS_STARTUP,
) -> AsyncIterator[Workers]:
    """Start ``workers``, wait until every partition of each of ``types`` (``(pattern,
    subject_for)`` pairs, split ``workers.count`` ways) answers a probe through the bus, and yield
    them; on the way out (however it ends) stop them.

    Raises:
        Timeout: a partition still had no owner after ``timeout`` seconds (a worker keeps failing:
            its stderr says why, e.g. the bus does not split the type's subject).
        PartitionsUnmapped: a partition is served by a process of another split.
    """
    await workers.start()
    try:
        for pattern, subject_for in types:
            await wait_for_partitions(client, subject_for, pattern, workers.count, timeout)
        yield workers
    finally:
        await workers.stop()
