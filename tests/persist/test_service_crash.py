"""kill -9 of the persist service process: no acknowledged write lost, no duplicate, no feed gap."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import conat
from conat._server import NatsServer
from persist import AStream

pytestmark = pytest.mark.anyio

_SERVE = """
import asyncio, sys
import conat
from persist import PersistServer, Placement, PlacementConfig

async def main():
    async with await conat.connect(sys.argv[1]) as client:
        async with PersistServer(client, Placement(PlacementConfig(root=sys.argv[2]))):
            await client.flush()
            print("ready", flush=True)
            await asyncio.Event().wait()

asyncio.run(main())
"""


class ServiceProcess:
    """The persist service in its own process, killed with SIGKILL and started again."""

    def __init__(self, url: str, root: Path) -> None:
        self.url, self.root = url, root
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, self.url, str(self.root)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def service(nats_server: NatsServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(nats_server.url, tmp_path)
    svc.start()
    yield svc
    if svc.proc is not None and svc.proc.poll() is None:
        svc.kill()


async def test_kill_9_during_10k_acknowledged_writes(service: ServiceProcess, client: conat.Client) -> None:
    total, killed_after = 10_000, 3_000
    scope = f"project-{uuid.uuid4()}"
    stream = AStream(client, scope, "log", timeout=60)
    acked: dict[int, int] = {}
    restarted = asyncio.Event()
    fed: list[int] = []
    fed_values: list[int] = []

    async def writer(worker: int, workers: int) -> None:
        for i in range(worker, total, workers):
            result = await stream.publish(i, msg_id=f"write-{i}")  # retried with the same msg-id
            acked[i] = result.seq
            if len(acked) == killed_after and not restarted.is_set():
                service.kill()
                await asyncio.to_thread(service.start)
                restarted.set()

    async def feed() -> None:
        async for change in stream.changefeed(0, wait=1.0):
            fed.extend(m.seq for m in change.messages)
            fed_values.extend(m.value() for m in change.messages)
            if len(fed) >= total:
                return

    consumer = asyncio.create_task(feed())
    await asyncio.gather(*(writer(w, 64) for w in range(64)))
    await asyncio.wait_for(consumer, 60)
    assert restarted.is_set()
    assert len(acked) == total  # every write was acknowledged, some only after retries
    stored = [m for batch in [b async for b in stream.get_all()] for m in batch]
    values = [m.value() for m in stored]
    assert sorted(values) == list(range(total))  # 0 lost, 0 duplicates
    assert {m.value(): m.seq for m in stored} == acked  # each ack names the message that was kept
    # the changefeed ran across the kill: every seq once, in order, no gap
    assert fed == sorted(fed) and len(set(fed)) == len(fed) == total
    assert fed == [m.seq for m in stored] and fed_values == values
