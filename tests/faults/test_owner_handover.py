"""One owner per key across processes on different nodes of a cluster: a keyed actor type run by
an owner and a standby (``conat run --standby``) connected to different nodes, callers on a third.

Rule: the owner's node killed mid-traffic, then the owner stopped cleanly: no two turns of a key
overlap, each caller's turns of a key run in the order it sent them, a call is refused 503 only
while nobody owns the key (between the kill and the owner's reconnect, between the stop and the
standby's first turn), and the standby serves after the hand-over.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import conat
from actors import actor_proxy
from conat import ConatError, Timeout
from conat.testing import LocalCluster
from tests.actors.sample_actors import TurnLog

from .conftest import Stopwatch, report

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
KEYS = [f"k{i}" for i in range(4)]
CALLERS_PER_KEY = 2


async def _run(urls: list[str], log: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conat.cli", "run", "tests.actors.sample_actors:TurnLog",
        "--url", ",".join(urls), *args,
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CONAT_TURN_LOG": str(log)},
    )  # fmt: skip


async def _said(proc: asyncio.subprocess.Process, prefix: str, timeout: float = 30.0) -> float:
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), timeout)
    assert line.decode().startswith(prefix), line
    return time.time()


async def test_an_owners_node_killed_then_a_clean_hand_over_keeps_one_owner_per_key(tmp_path: Path) -> None:
    log = tmp_path / "turns.jsonl"
    async with LocalCluster(tmp_path / "cluster", 3) as cluster:
        u = cluster.urls
        owner = await _run([u[0], u[1], u[2]], log)
        await _said(owner, "serving TurnLog")
        standby = await _run([u[1], u[2], u[0]], log, "--standby")
        await _said(standby, "standing by for TurnLog")
        refused: list[float] = []
        timeouts: list[float] = []
        acked: dict[tuple[str, str], list[int]] = {}
        done = asyncio.Event()
        try:
            async with await conat.connect([u[2], u[1]], name="callers") as client:

                async def caller(key: str, name: str) -> None:
                    proxy = actor_proxy(client, TurnLog, key, timeout=1.0)
                    seq = 0
                    while not done.is_set():
                        try:
                            await proxy.turn(name, seq)
                        except Timeout:
                            timeouts.append(time.time())  # a reply a dead node lost: send it again
                            continue
                        except ConatError as e:
                            assert e.code == 503, e
                            refused.append(time.time())
                            await asyncio.sleep(0.02)
                            continue
                        acked.setdefault((key, name), []).append(seq)
                        seq += 1

                tasks = [
                    asyncio.ensure_future(caller(k, f"c{j}")) for k in KEYS for j in range(CALLERS_PER_KEY)
                ]
                await asyncio.sleep(1.0)
                killed_at = time.time()
                await cluster.kill(0)  # the owner's node
                await asyncio.sleep(2.0)
                stopped_at = time.time()
                owner.send_signal(signal.SIGTERM)
                watch = Stopwatch()
                taken_at = await _said(standby, "serving TurnLog")
                handover = watch()
                await asyncio.sleep(1.0)
                done.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert await asyncio.wait_for(owner.wait(), 30) == 0
        finally:
            for proc in (owner, standby):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(proc.wait(), 30)

    turns = [json.loads(line) for line in log.read_text().splitlines()]
    owner_pid, standby_pid = owner.pid, standby.pid
    by_key: dict[str, list[dict[str, object]]] = {}
    for t in turns:
        by_key.setdefault(str(t["key"]), []).append(t)
    overlaps = 0
    out_of_order = 0
    for key_turns in by_key.values():
        key_turns.sort(key=lambda t: float(t["start"]))  # type: ignore[arg-type]
        for a, b in itertools.pairwise(key_turns):
            overlaps += float(b["start"]) < float(a["end"])  # type: ignore[arg-type]
        for name in {str(t["caller"]) for t in key_turns}:
            seqs = [int(t["seq"]) for t in key_turns if t["caller"] == name]  # type: ignore[call-overload]
            out_of_order += sum(1 for x, y in itertools.pairwise(seqs) if y < x)
    after_kill = [t for t in turns if t["pid"] == owner_pid and float(t["start"]) > killed_at + 0.1]  # type: ignore[arg-type]
    by_standby = [t for t in turns if t["pid"] == standby_pid]
    first_after_kill = min(float(t["start"]) for t in after_kill)  # type: ignore[arg-type]
    first_by_standby = min(float(t["start"]) for t in by_standby)  # type: ignore[arg-type]
    unowned = [(killed_at, first_after_kill + 0.5), (stopped_at, max(first_by_standby, taken_at) + 0.5)]
    stray = [r for r in refused if not any(lo <= r <= hi for lo, hi in unowned)]
    report(
        "owner's node killed, then hand-over",
        turns=len(turns), overlaps=overlaps, out_of_order=out_of_order, refused_503=len(refused),
        timeouts=len(timeouts), owner_back_after=first_after_kill - killed_at, handover_s=handover,
        standby_turns=len(by_standby),
    )  # fmt: skip
    assert overlaps == 0
    assert out_of_order == 0
    assert stray == [], (stray, unowned)
    assert after_kill, "the owner kept its claim across its node's death"
    assert by_standby, "the standby took over"
    assert all(float(t["start"]) >= stopped_at for t in by_standby)  # type: ignore[arg-type]
    for seqs in acked.values():
        assert seqs == list(range(len(seqs)))
