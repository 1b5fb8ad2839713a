"""SIGSTOP of the broker for 10 s, then SIGCONT: the server is there but answers nothing.

Rules: requests made while it is frozen fail at their deadline (408), or at once with 503 if the
client declares the link dead meanwhile; none hangs. Once it runs again, requests succeed within
a few seconds and the subscription delivers what is published after, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

import conat
from conat import NatsServer, ServerConfig

from .conftest import report

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REQUEST_TIMEOUT = 1.0


async def _echo(msg: conat.Message) -> None:
    await msg.respond(msg.raw, encoding="raw")


async def test_sigstop_of_the_broker_for_10_s(tmp_path: Path) -> None:
    async with NatsServer(ServerConfig(), directory=tmp_path / "server") as server:
        pid = server.pid
        assert pid is not None
        async with await conat.connect(server.url) as requester, await conat.connect(server.url) as responder:
            await responder.subscribe("fault.svc", callback=_echo)
            ticks: list[int] = []
            await responder.subscribe("fault.tick", dispatch=lambda m: ticks.append(m.data))
            outcomes: list[tuple[float, float, int | None]] = []
            stop = asyncio.Event()

            async def requests() -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    try:
                        await requester.request("fault.svc", b"x", encoding="raw", timeout=REQUEST_TIMEOUT)
                        code = None
                    except conat.ConatError as e:
                        code = e.code if isinstance(e.code, int) else -1  # type: ignore[attr-defined]
                        await asyncio.sleep(0.05)
                    outcomes.append((started, time.perf_counter() - started, code))

            task = asyncio.create_task(requests())
            try:
                await asyncio.sleep(0.5)
                frozen = time.perf_counter()
                os.kill(pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(10.0)
                finally:
                    os.kill(pid, signal.SIGCONT)
                thawed = time.perf_counter()
                async with asyncio.timeout(20):
                    while not any(s > thawed and c is None for s, _, c in outcomes):
                        await asyncio.sleep(0.02)
                back = time.perf_counter() - thawed
                for n in range(100):
                    await requester.publish("fault.tick", n)
                async with asyncio.timeout(10):
                    while len(ticks) < 100:
                        await asyncio.sleep(0.02)
            finally:
                stop.set()
                await task
            during = [o for o in outcomes if frozen <= o[0] < thawed]
            failed = [c for *_, c in during if c is not None]
            report(
                "SIGSTOP 10 s",
                requests_during=len(during),
                failed={c: failed.count(c) for c in set(failed)},
                max_request_s=max(t for _, t, _ in during),
                requests_back_after_sigcont_s=back,
                reconnects=requester.statistics().reconnects,
            )
            assert set(failed) <= {408, 503}
            assert max(t for _, t, _ in during) < REQUEST_TIMEOUT + 0.5
            assert back < 15.0
            assert ticks == list(range(100))
