"""Partitioned persist workers: N processes, each serving one partition of the scopes.

One persist process is one Python interpreter, so it uses one core. ``conat persist serve --workers
N`` (and ``conat up --workers N``) start N worker processes instead, ``conat persist serve
--partition i/N`` each: the bus splits ``persist.*.>`` among them by scope (a subject mapping,
:func:`persist.persist_mappings`; :mod:`actors._partitions` says how), so a scope, and every
stream file in it, has exactly one worker; worker 0 also takes the bootlogs and sends each on to its
scope's worker. Each worker locks its own partition of the storage roots
(:mod:`persist._rootlock`).

:class:`Workers` keeps them running: a worker that exits while the others serve is started again
(after a backoff that grows while it keeps failing); meanwhile its partition answers 503 and its
callers retry. Stopping sends every worker SIGTERM (each answers what it took, then closes its
files) and waits for them; one still running after the grace is killed. Workers die with their
parent however it dies (:func:`conat.die_with_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Final, final

from conat import Backoff, BackoffSequence, die_with_parent

__all__ = ["WORKER_BACKOFF", "Workers", "worker_command"]

log = logging.getLogger("conat.persist.workers")

WORKER_BACKOFF: Final = Backoff(initial=0.2, maximum=10.0, jitter=0.5)
"""Between restarts of a worker that keeps exiting."""
_STEADY: Final = 30.0
"""A worker that ran this long before it exited is restarted at once (its backoff starts over)."""


def worker_command(index: int, count: int, args: Sequence[str]) -> list[str]:
    """The command of worker ``index`` of ``count``: ``conat persist serve --partition i/N`` with
    ``args`` (the connection and file options the parent was given)."""
    return [
        sys.executable,
        "-m",
        "conat.cli",
        "persist",
        "serve",
        "--partition",
        f"{index}/{count}",
        *args,
    ]


@final
class Workers:
    """N worker processes kept running until :meth:`stop` (module docstring); ``quiet`` sends their
    output lines to /dev/null (their errors still go to stderr)."""

    def __init__(self, count: int, args: Sequence[str], *, stop_timeout: float, quiet: bool = False) -> None:
        self.count = count
        self._stdout = asyncio.subprocess.DEVNULL if quiet else None
        self._args = list(args)
        self._stop_timeout = stop_timeout
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = False
        self.restarts = 0

    async def start(self) -> None:
        """Start every worker (each keeps itself running until :meth:`stop`)."""
        loop = asyncio.get_running_loop()
        for index in range(self.count):
            await self._spawn(index)
            self._keepers.append(loop.create_task(self._keep(index), name=f"persist worker {index}"))

    @property
    def pids(self) -> list[int]:
        return [p.pid for _, p in sorted(self._procs.items())]

    async def _spawn(self, index: int) -> None:
        cmd = die_with_parent(worker_command(index, self.count, self._args))
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
            log.warning("persist worker %d of %d exited (%s); starting it again in %.1f s",
                        index, self.count, code, delay)  # fmt: skip
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
