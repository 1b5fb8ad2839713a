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

from .conftest import Requests, failures, longest, report

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
            requests = Requests(requester, "fault.svc", REQUEST_TIMEOUT)
            task = asyncio.create_task(requests.run())
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
                    while not requests.served_after(thawed):
                        await asyncio.sleep(0.02)
                back = time.perf_counter() - thawed
                for n in range(100):
                    await requester.publish("fault.tick", n)
                async with asyncio.timeout(10):
                    while len(ticks) < 100:
                        await asyncio.sleep(0.02)
            finally:
                requests.stop.set()
                await task
            during = requests.between(frozen, thawed)
            failed = failures(during)
            report(
                "SIGSTOP 10 s",
                requests_during=len(during),
                failed=failed,
                max_request_s=longest(during),
                requests_back_after_sigcont_s=back,
                reconnects=requester.statistics().reconnects,
            )
            assert set(failed) <= {408, 503}
            assert longest(during) < REQUEST_TIMEOUT + 0.5
            assert back < 15.0
            assert ticks == list(range(100))
