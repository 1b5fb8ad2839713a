"""master benchmarks: a real master (its own bus, SQLite) with real hosts (``conat host serve``
processes of the local provider), each row against a baseline measured in the same run.

Rows (all informational: the table shows both sides, there is no target to pass)
---------------------------------------------------------------------------------
``master_platform`` starts one platform (master and two local hosts) per run and measures three
things on it (the baseline side: one host's runner asked directly, and a local copy):

* ``master_start_p50`` / ``_p99`` (ms): ``projects.start(wait=True)`` through master, request ->
  ``running`` (20 starts in a full run). Baseline: the host runner's ``start`` (what master adds:
  its checks, the token it mints, the relay through the host's agent).
* ``master_status`` (calls/s): ``projects.status`` from 100 concurrent clients (10 in a quick run),
  each its own connection with its own API key. Baseline: the host runner's ``status`` from as many.
* ``master_move`` (MB/s) and ``master_move_downtime`` (s): moving the running project with a file
  of 1 GiB (8 MiB in a quick run) to the other host, request to answer. Baseline: a local ``cp`` of
  as many bytes (the disk's floor); downtime 0.

``master_keepalive_cpu`` (%) and ``master_keepalive_p99`` (ms): 1,000 simulated hosts (10 in a
quick run) each sending a keepalive every 2 s to master running as its own process: master's CPU
and the round trip. Baseline: the same requests to an echo on the bench's own bus (the bus's floor; CPU 0).

``master_placement`` (s): placing 10,000 projects (500 in a quick run) on 100 hosts, each decision
seeing the ones before. Baseline: a bare loop picking the host with the most free slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import psutil

import conat
from conat.auth import Keyring, TokenIssuer
from conat.platform import Keepalive
from host import runner_proxy
from master import ApiKeyFile, Candidate, MasterApi, MasterConfig, MasterServer, connect, place
from subjects import HUB, MASTER_BUS, Scope, host_scope, master_host_api

from ._harness import Bench, Measure, Metric, Sample, percentile
from ._host import _host

__all__ = ["master_benches"]

_WAIT: Final = 300.0
_MIB: Final = 1024 * 1024
KEEPALIVE_INTERVAL: Final = 2.0


@contextlib.asynccontextmanager
async def _platform(hosts: int) -> AsyncIterator[tuple[MasterServer, MasterApi, list[str]]]:
    """A master in this process with ``hosts`` local hosts (processes), online; torn down after."""
    tmp = Path(tempfile.mkdtemp(prefix="conat-bench-master-", dir="/tmp"))
    tmp.chmod(0o711)  # noqa: ASYNC240 - setup, not timed
    try:
        config = MasterConfig(
            data_dir=str(tmp / "master"), local_hosts_dir=str(tmp / "hosts"), keepalive_interval=1.0,
            local_host_options={"stop_grace": 2.0},
        )  # fmt: skip
        async with MasterServer(config) as server:
            admin = await connect(await server.ensure_admin())
            try:
                made = [
                    await admin.hosts.create(f"bench-{i}", provider="local", capacity=100_000)
                    for i in range(hosts)
                ]
                ids = [m.host.host_id for m in made]
                deadline = time.monotonic() + _WAIT
                while not all(h.status == "online" for h in [await admin.hosts.get(i) for i in ids]):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the bench's hosts did not come online")
                    await asyncio.sleep(0.2)
                yield server, admin, ids
            finally:
                await admin.aclose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _latencies(values: list[float], count: int) -> Sample:
    values.sort()
    return Sample(
        percentile(values, 0.50) * 1e3, {"p99_ms": percentile(values, 0.99) * 1e3}, count=count,
        elapsed_s=sum(values),
    )  # fmt: skip


def _platform_rows(through_master: bool) -> Measure:
    """Start latency, status calls/s and a move, on one platform (master and two local hosts), so
    a run starts it once. The baseline asks one host's runner directly (start, status) and copies
    the file locally (move)."""

    async def measure(url: str, count: int) -> Sample:
        starts, clients, per, size = (20, 100, 50, 1024) if count >= 1000 else (1, 4, 3, 2)
        extra: dict[str, float] = {}
        if through_master:
            async with _platform(2) as (server, admin, (first, second)):
                latencies = []
                for _ in range(starts):
                    made = await admin.projects.create("bench", host_id=first)
                    t = time.perf_counter()
                    state = (await admin.projects.start(made.project_id, wait=True)).state
                    latencies.append(time.perf_counter() - t)
                    if state != "running":
                        raise RuntimeError(f"a bench project did not start: {state}")
                apis: list[MasterApi] = []
                try:
                    for _ in range(clients):
                        key = await admin.accounts.create_api_key("bench")
                        apis.append(await connect(ApiKeyFile(master=server.url, account_id=key.account_id,
                                                             api_key=key.api_key)))  # fmt: skip
                    rate = await _rate(clients, per, lambda i: apis[i].projects.status(made.project_id))
                finally:
                    for api in apis:
                        await api.aclose()
                filled = await admin.projects.exec(
                    made.project_id,
                    ["sh", "-c", f"head -c {size * _MIB} /dev/urandom > big.bin"],
                    timeout=3600,
                )
                if filled.code != 0:
                    raise RuntimeError(f"could not make the bench file: {filled.stderr!r}")
                t = time.perf_counter()
                moved = await admin.projects.move(made.project_id, second)
                extra["move_mb_s"] = size / (time.perf_counter() - t)
                extra["downtime_s"] = moved.downtime
        else:
            latencies = []
            async with _host() as (hosted, _client, runner, issuer):
                for _ in range(starts):
                    project = str(uuid.uuid4())
                    await runner.create(project)
                    t = time.perf_counter()
                    status = await runner.start(project, wait=_WAIT)
                    latencies.append(time.perf_counter() - t)
                    if status.state != "running":
                        raise RuntimeError(f"a bench project did not start: {status.reason}")
                token = issuer.issue(HUB, host_scope(hosted.host_id), Scope(), 3600)
                hubs = [await conat.connect(hosted.url, credentials=token) for _ in range(clients)]
                try:
                    runners = [runner_proxy(hub, hosted.host_id, timeout=_WAIT) for hub in hubs]
                    rate = await _rate(clients, per, lambda i: runners[i].status(project))
                finally:
                    for hub in hubs:
                        await hub.aclose()
            extra["move_mb_s"] = await asyncio.to_thread(_copy_rate, size)
            extra["downtime_s"] = 0.0
        sample = _latencies(latencies, starts)
        sample.extra.update(extra, status_rate=rate.value)
        return sample

    return measure


def _copy_rate(mib: int) -> float:
    """MB/s of a local copy of a fresh file of ``mib`` MiB (the disk's own floor)."""
    tmp = Path(tempfile.mkdtemp(prefix="conat-bench-copy-", dir="/tmp"))
    try:
        source = tmp / "big.bin"
        with source.open("wb") as f:
            for _ in range(mib):
                f.write(os.urandom(_MIB))
        t = time.perf_counter()
        shutil.copyfile(source, tmp / "copy.bin")
        return mib / (time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _rate(clients: int, per: int, call: Callable[[int], Awaitable[object]]) -> Sample:
    """Calls/s of ``clients`` loops of ``per`` calls each (after a short warm-up)."""

    async def loop(i: int, n: int) -> None:
        for _ in range(n):
            await call(i)

    await asyncio.gather(*(loop(i, 2) for i in range(clients)))
    t = time.perf_counter()
    await asyncio.gather(*(loop(i, per) for i in range(clients)))
    elapsed = time.perf_counter() - t
    return Sample(per * clients / elapsed, count=per * clients, elapsed_s=elapsed)


def _keepalives(to_master: bool) -> Measure:
    async def measure(url: str, count: int) -> Sample:
        # a quick run beats faster, so that its hosts' first beats and the last sleep take no longer
        # than its one second of beating (a smoke run, no figure to judge)
        hosts, seconds, interval = (count, 10.0, KEEPALIVE_INTERVAL) if count >= 1000 else (count, 1.0, 0.25)
        if not to_master:  # the same requests to an echo on the bench's own bus: the bus's floor
            async with await conat.connect(url) as client:
                echo = "bench.master.keepalive"
                await client.subscribe(echo, callback=lambda m: m.respond(b"ok"))
                latencies = await _beat(client, [echo] * hosts, seconds, interval)
            return Sample(
                0.0, {"p99_ms": percentile(latencies, 0.99) * 1e3}, count=len(latencies), elapsed_s=seconds
            )
        tmp = Path(tempfile.mkdtemp(prefix="conat-bench-keepalive-", dir="/tmp"))
        data = tmp / "master"
        out = tmp / "master.out"
        with out.open("w") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 - master as its own process: its CPU alone
                [sys.executable, "-m", "conat.cli", "master", "serve", "--data-dir", str(data), "--admin-key",
                 str(tmp / "admin.key")], stdout=log, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + _WAIT
            while "master ready" not in out.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"master did not start: {out.read_text()}")
                await asyncio.sleep(0.05)
            key = ApiKeyFile.load(tmp / "admin.key")
            issuer = TokenIssuer(Keyring.open(data / "keys"))
            async with await connect(key) as admin, await conat.connect(
                key.master, credentials=issuer.issue(HUB, MASTER_BUS, Scope(), 3600)
            ) as hub:  # fmt: skip
                ids = [(await admin.hosts.create(f"sim-{i}")).host.host_id for i in range(hosts)]
                master = psutil.Process(proc.pid)
                master.cpu_percent(None)
                latencies = await _beat(hub, [master_host_api(h) for h in ids], seconds, interval)
                cpu = master.cpu_percent(None)
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait)
            shutil.rmtree(tmp, ignore_errors=True)
        return Sample(
            cpu, {"p99_ms": percentile(latencies, 0.99) * 1e3}, count=len(latencies), elapsed_s=seconds
        )

    return measure


async def _beat(client: conat.Client, subjects: list[str], seconds: float, interval: float) -> list[float]:
    """A keepalive on each subject every ``interval`` (spread over it) for ``seconds``; sorted latencies."""
    body = conat.RpcRequest("host.keepalive", [Keepalive()])
    latencies: list[float] = []

    async def one(subject: str, offset: float) -> None:
        await asyncio.sleep(offset)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            await client.request(subject, body, timeout=30)
            latencies.append(time.perf_counter() - t)
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t)))

    spread = interval / max(len(subjects), 1)
    await asyncio.gather(*(one(s, i * spread) for i, s in enumerate(subjects)))
    latencies.sort()
    return latencies


def _placement(full_rules: bool) -> Measure:
    async def measure(url: str, count: int) -> Sample:
        account = str(uuid.uuid4())
        hosts = [str(uuid.uuid4()) for _ in range(100)]
        assigned = dict.fromkeys(hosts, 0)
        t = time.perf_counter()
        for _ in range(count):
            if full_rules:
                candidates = [
                    Candidate(host_id=h, owner=account, status="online", capacity=1_000_000, assigned=n)
                    for h, n in assigned.items()
                ]
                chosen = place(candidates, account).host_id
            else:
                chosen = max(assigned, key=lambda h: 1_000_000 - assigned[h])
            assigned[chosen] += 1
        elapsed = time.perf_counter() - t
        return Sample(elapsed, count=count, elapsed_s=elapsed)

    return measure


def master_benches() -> list[Bench]:
    return [
        Bench("master_platform", "through master: start -> running, status from many clients, a move",
              _platform_rows(True), _platform_rows(False),
              (Metric("master_start_p50", "ms", 0.0, higher_is_better=False, informational=True),
               Metric("master_start_p99", "ms", 0.0, "p99_ms", higher_is_better=False, informational=True),
               Metric("master_status", "calls/s", 0.0, "status_rate", informational=True),
               Metric("master_move", "MB/s", 0.0, "move_mb_s", informational=True),
               Metric("master_move_downtime", "s", 0.0, "downtime_s", higher_is_better=False, informational=True)),
              1000, 1, {"starts": 20, "clients": 100, "move_mib": 1024}, baseline="host runner / cp"),
        Bench("master_keepalive", "simulated hosts (1000 in a full run) sending a keepalive every 2 s",
              _keepalives(True), _keepalives(False),
              (Metric("master_keepalive_cpu", "%", 0.0, higher_is_better=False, informational=True),
               Metric("master_keepalive_p99", "ms", 0.0, "p99_ms", higher_is_better=False, informational=True)),
              1000, 10, {"interval_s": KEEPALIVE_INTERVAL}, baseline="echo on bus"),
        Bench("master_placement", "placing N projects (10,000 in a full run) on 100 hosts",
              _placement(True), _placement(False),
              (Metric("master_placement", "s", 0.0, higher_is_better=False, informational=True),),
              10_000, 500, {"hosts": 100}, baseline="bare max-free loop"),
    ]  # fmt: skip
