"""``conat run``: serve actor classes from a module in a real subprocess; stop it with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

import conat
from actors import actor_proxy
from conat._server import NatsServer

from .sample_actors import Clock, Greeter

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


async def _start(url: str, *targets: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conat.cli", "run", *targets, "--url", url,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


async def _read_lines(proc: asyncio.subprocess.Process, count: int) -> list[str]:
    assert proc.stderr is not None
    lines = []
    for _ in range(count):
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert line, f"conat run ended early: {lines}"
        lines.append(line.decode().strip())
    return lines


async def test_conat_run_serves_a_module_and_stops_on_sigterm(nats_server: NatsServer) -> None:
    proc = await _start(nats_server.url, "tests.actors.sample_actors")
    try:
        lines = await _read_lines(proc, 2)
        assert sorted(lines) == ["serving Clock on sampleclock", "serving Greeter on greeter.*"]
        async with await conat.connect(nats_server.url) as client:
            assert await actor_proxy(client, Greeter, "k").greet("ann") == "hello ann, from k"
            assert await actor_proxy(client, Clock).tick() == 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_conat_run_names_a_bad_target(nats_server: NatsServer) -> None:
    proc = await _start(nats_server.url, "tests.actors.sample_actors:Nope")
    assert proc.stderr is not None
    err = (await asyncio.wait_for(proc.stderr.read(), 20)).decode()
    assert await proc.wait() == 1
    assert "'tests.actors.sample_actors:Nope' is not an actor class" in err


async def test_conat_run_json_reports_each_type_on_stdout(nats_server: NatsServer) -> None:
    proc = await _start(nats_server.url, "tests.actors.sample_actors:Greeter", "--json", "--queue", "g")
    try:
        assert proc.stdout is not None
        event = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert (event["event"], event["actor"], event["subject"], event["queue"]) == (
            "serving", "Greeter", "greeter.*", "g",
        )  # fmt: skip
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
