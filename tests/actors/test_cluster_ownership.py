"""One owner per keyed type across processes on different nodes of a cluster, the standby's wait,
and the owner's side of the lease (it fences itself when its connection stays down)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import conat
from actors import ActorSystem, OwnedElsewhere, actor_proxy
from actors._ownership import OwnerNotice, Verdict, judge
from conat.testing import LocalCluster

from .sample_actors import Greeter

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_a_released_notice_on_the_claim_subject_is_ignored_by_an_owner() -> None:
    me = OwnerNotice("owner", "greeter.*", "Greeter", "a", since=2.0)
    other = OwnerNotice("released", "greeter.*", "Greeter", "b", since=1.0)
    assert judge(me, other) is Verdict.IGNORE


async def test_conat_run_queue_on_two_nodes_the_second_refuses(tmp_path: Path) -> None:
    """The issue's case: ``--queue`` on two nodes made every key active in both processes."""
    async with LocalCluster(tmp_path, 3) as cluster:
        procs = []
        try:
            for url in (cluster.urls[0], cluster.urls[1]):
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "conat.cli", "run", "tests.actors.sample_actors:Greeter", "--queue", "q",
                    "--url", url, cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                    env=_env(),
                ))  # fmt: skip
                if len(procs) == 1:
                    assert procs[0].stderr is not None
                    line = await asyncio.wait_for(procs[0].stderr.readline(), 30)
                    assert line.startswith(b"serving Greeter"), line
            _, err = await asyncio.wait_for(procs[1].communicate(), 30)
            assert procs[1].returncode != 0
            assert b"is already served by process" in err
            async with await conat.connect(cluster.urls[2]) as client:
                assert await actor_proxy(client, Greeter, "k").greet("x") == "hello x, from k"
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(proc.wait(), 30)


async def test_two_processes_on_different_nodes_claiming_at_once_end_with_one_owner(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 3) as cluster:
        for _ in range(2):
            start_at = time.time() + 2.5
            procs = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tests.actors.claim_race",
                    cluster.urls[i],
                    str(start_at),
                    "1.0",
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    env=_env(),
                )
                for i in (0, 1)
            ]
            outputs = await asyncio.gather(*(asyncio.wait_for(p.communicate(), 30) for p in procs))
            lines = [[json.loads(x) for x in out.decode().splitlines()] for out, _ in outputs]
            assert [ls[-1].get("final") for ls in lines].count("owner") == 1, lines


async def test_an_owner_disconnected_for_half_its_lease_stops_serving(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 1) as cluster:
        async with await conat.connect(cluster.urls[0], name="fenced") as client:
            system = ActorSystem(client, claim_lease=1.0)
            await system.start(Greeter)
            await cluster.kill(0)
            watch = time.perf_counter()
            while system.failure is None and time.perf_counter() - watch < 5:
                await asyncio.sleep(0.05)
            fenced_after = time.perf_counter() - watch
            assert 0.4 <= fenced_after < 1.0  # half the lease, before a standby may claim
            await cluster.restart(0)
            with pytest.raises(OwnedElsewhere) as lost:
                await asyncio.wait_for(system.wait(), 20)
            assert lost.value.running and "fenced" in lost.value.owner
            assert "past half its claim's lease" in str(lost.value)
        async with await conat.connect(cluster.urls[0]) as caller:
            with pytest.raises(conat.NoResponders):
                await actor_proxy(caller, Greeter, "k").greet("x")


async def test_a_standby_takes_over_when_the_owner_stops_and_when_it_vanishes(
    nats_server: conat.NatsServer,
) -> None:
    async with (
        await conat.connect(nats_server.url, name="first") as one,
        await conat.connect(nats_server.url, name="second") as two,
        await conat.connect(nats_server.url, name="third") as three,
    ):
        first = ActorSystem(one)
        await first.start(Greeter)
        second = ActorSystem(two, claim_lease=1.0)
        waiting = asyncio.ensure_future(second.start(Greeter, standby=True))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # the owner answers: the standby waits
        await first.stop()
        await asyncio.wait_for(waiting, 5)  # released: taken over at once
        third_system = ActorSystem(three, claim_lease=1.0)
        vanished = asyncio.ensure_future(third_system.start(Greeter, standby=True))
        await asyncio.sleep(0.5)
        assert not vanished.done()
        for claim in second._claims["Greeter"]:  # the owner vanishes without a word (a killed process)
            claim._acquired = False
            await claim.release()
        watch = time.perf_counter()
        await asyncio.wait_for(vanished, 10)
        assert time.perf_counter() - watch >= 0.9  # only after the lease
        await second.stop()
        await third_system.stop()
