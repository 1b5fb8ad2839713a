"""kill -9 of the persist service process during writes and open changefeeds, on a cluster: the
service on one node, the writers on another, the changefeed on the third; the service comes back
on yet another node.

Rules: 0 acknowledged writes lost; no duplicate; the changefeed, open across the kill, sees every
seq once, in order, without a gap.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

import conat
from conat.testing import LocalCluster
from persist import AStream
from tests.persist.test_service_crash import ServiceProcess

from .conftest import Stopwatch, report

pytestmark = pytest.mark.anyio

TOTAL, KILL_AFTER, WRITERS = 2000, 700, 32


async def test_kill_9_of_persist_during_writes_and_a_changefeed(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    node0, node1, node2 = cluster.urls
    service = ServiceProcess(node0, tmp_path / "sync")
    await asyncio.to_thread(service.start)
    try:
        async with await conat.connect(node1) as writer_client, await conat.connect(node2) as feed_client:
            scope = f"project-{uuid.uuid4()}"
            writes = AStream(writer_client, scope, "log", timeout=60)
            feed_stream = AStream(feed_client, scope, "log", timeout=60)
            acked: dict[int, int] = {}
            restarted = asyncio.Event()
            outage: list[float] = []
            fed: list[int] = []

            async def writer(worker: int) -> None:
                for i in range(worker, TOTAL, WRITERS):
                    result = await writes.publish(i, msg_id=f"write-{i}")  # retried with the same msg-id
                    acked[i] = result.seq
                    if len(acked) == KILL_AFTER and not restarted.is_set():
                        clock = Stopwatch()
                        service.kill()
                        service.url = node2  # it comes back on another node
                        await asyncio.to_thread(service.start)
                        outage.append(clock())
                        restarted.set()

            async def feed() -> None:
                async for change in feed_stream.changefeed(0, wait=1.0):
                    fed.extend(m.seq for m in change.messages)
                    if len(fed) >= TOTAL:
                        return

            started = time.perf_counter()
            consumer = asyncio.create_task(feed())
            await asyncio.gather(*(writer(w) for w in range(WRITERS)))
            await asyncio.wait_for(consumer, 60)
            took = time.perf_counter() - started
            stored = [m for batch in [b async for b in writes.get_all()] for m in batch]
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.kill()
    values = [m.value() for m in stored]
    report(
        "kill -9 of persist on a cluster",
        acknowledged=len(acked),
        stored=len(stored),
        lost=len(set(acked) - set(values)),
        duplicates=len(values) - len(set(values)),
        fed=len(fed),
        restart_s=outage[0] if outage else None,
        writes_per_s=TOTAL / took,
    )
    assert restarted.is_set() and len(acked) == TOTAL
    assert sorted(values) == list(range(TOTAL))  # 0 lost, 0 duplicates
    assert {m.value(): m.seq for m in stored} == acked  # each ack names the message that was kept
    assert fed == [m.seq for m in stored]  # every seq once, in order, no gap
