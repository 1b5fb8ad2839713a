"""Project host benchmarks: a real host (its own bus, persist, runner) with real sandboxed projects.

* ``host_start_<n>``: ``n`` projects started at once, request -> ``running`` (p50, p99). Baseline:
  the same project program spawned plainly (no runner, no sandbox) on the same bus, until it
  answers its status: what the runner and the isolation add.
* ``host_exec``: ``exec`` round trip of ``true`` (p50, p99) and streamed output (MB/s) through a
  project. Baseline: the same commands as local subprocesses of the bench (no bus, no sandbox).
* ``host_idle``: host RSS growth with ``n`` idle projects, and the reconcile time of a host restart
  with half of them running. Baseline: the same host with no project.

Every row is informational (the table shows both sides; there is no target to pass). Each side
starts its own host in a fresh directory under /tmp (0711, so project uids reach their homes);
that setup is not timed.
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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import psutil

import conat
from conat.auth import Keyring, TokenIssuer
from host import HostConfig, HostServer, Runner, exec_command, exec_stream, runner_proxy
from subjects import HUB, Scope, host_scope, project_scope, project_subject

from ._harness import Bench, Measure, Metric, Sample, percentile

__all__ = ["host_benches"]

STATUS: Final = {"name": "project.status", "args": [], "kwargs": {}}
STREAM_BYTES: Final = 32 * 1024 * 1024
_MIB: Final = 1024 * 1024
_WAIT: Final = 300.0


@contextlib.asynccontextmanager
async def _host(**options: object) -> AsyncIterator[tuple[HostServer, conat.Client, Runner, TokenIssuer]]:
    tmp = Path(tempfile.mkdtemp(prefix="conat-bench-host-", dir="/tmp"))
    tmp.chmod(0o711)  # noqa: ASYNC240 - setup, not timed
    try:
        keys = tmp / "keys"
        issuer = TokenIssuer(Keyring.open(keys))
        settings: dict[str, object] = {
            "stop_projects_on_shutdown": True, "stop_grace": 2.0, "start_timeout": _WAIT, **options
        }  # fmt: skip
        config = HostConfig(data_dir=str(tmp / "data"), signing_keys=str(keys), **settings)  # type: ignore[arg-type]
        server = await HostServer(config).start()
        try:
            token = issuer.issue(HUB, host_scope(server.host_id), Scope(), 3600)
            async with await conat.connect(server.url, credentials=token) as client:
                yield server, client, runner_proxy(client, server.host_id, timeout=_WAIT), issuer
        finally:
            await server.aclose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _latencies(latencies: list[float], count: int) -> Sample:
    latencies.sort()
    return Sample(
        percentile(latencies, 0.50) * 1e3,
        {"p99_ms": percentile(latencies, 0.99) * 1e3},
        count=count,
        elapsed_s=sum(latencies),
    )


def batches(count: int) -> tuple[int, int, int]:
    """How many projects each of the three start rows starts at once: 1, 10, 50 for a count of 50."""
    return 1, max(1, count // 5), count


def _start(sandboxed: bool) -> Measure:
    async def measure(url: str, count: int) -> Sample:
        extra: dict[str, float] = {}
        async with _host() as (server, client, runner, issuer):
            spawned: list[subprocess.Popen[bytes]] = []

            async def managed(project: str) -> float:
                t = time.perf_counter()
                status = await runner.start(project, wait=_WAIT)
                if status.state != "running":
                    raise RuntimeError(f"project {project} did not start: {status.reason}")
                return time.perf_counter() - t

            async def plain(project: str) -> float:
                token_file = server.config.data / f"bench-{project}.token"
                token_file.write_text(
                    issuer.issue(project_scope(project), host_scope(server.host_id), Scope(), 3600)
                )
                token_file.chmod(0o600)
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONAT_PROJECT_ID": project,
                       "CONAT_URL": server.url, "CONAT_CREDENTIALS": str(token_file)}  # fmt: skip
                t = time.perf_counter()
                spawned.append(
                    subprocess.Popen(  # noqa: ASYNC220 - the baseline: a plain spawn
                        [sys.executable, "-m", "host.project"], env=env, stderr=subprocess.DEVNULL
                    )
                )
                await client.request(
                    project_subject(project, "status"), STATUS, timeout=_WAIT, wait_for_interest=True
                )
                return time.perf_counter() - t

            try:
                measured: dict[int, list[float]] = {}
                for row, n in zip(("one", "some", "many"), batches(count), strict=True):
                    if n in measured:  # quick mode: 1, 1, 1 is measured once
                        latencies = measured[n]
                        extra[f"{row}_p50_ms"] = percentile(latencies, 0.50) * 1e3
                        extra[f"{row}_p99_ms"] = percentile(latencies, 0.99) * 1e3
                        continue
                    projects = [str(uuid.uuid4()) for _ in range(n)]
                    for project in projects:
                        await runner.create(project)
                    starts = managed if sandboxed else plain
                    latencies = sorted(await asyncio.gather(*(starts(p) for p in projects)))
                    measured[n] = latencies
                    extra[f"{row}_p50_ms"] = percentile(latencies, 0.50) * 1e3
                    extra[f"{row}_p99_ms"] = percentile(latencies, 0.99) * 1e3
            finally:
                for proc in spawned:
                    proc.terminate()
                for proc in spawned:
                    await asyncio.to_thread(proc.wait)
        return Sample(extra["one_p50_ms"], extra, count=sum(batches(count)))

    return measure


def _exec(through_project: bool) -> Measure:
    async def measure(url: str, count: int) -> Sample:
        stream_bytes = STREAM_BYTES if count >= 100 else STREAM_BYTES // 8
        if not through_project:
            latencies = []
            for _ in range(count):
                t = time.perf_counter()
                proc = await asyncio.create_subprocess_exec("true")
                await proc.wait()
                latencies.append(time.perf_counter() - t)
            t = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                "head", "-c", str(stream_bytes), "/dev/zero", stdout=asyncio.subprocess.PIPE
            )
            assert proc.stdout is not None
            got = 0
            while data := await proc.stdout.read(64 * 1024):
                got += len(data)
            await proc.wait()
            stream_s = time.perf_counter() - t
        else:
            async with _host() as (_, client, runner, _issuer):
                project = str(uuid.uuid4())
                await runner.create(project)
                await runner.start(project, wait=_WAIT)
                for _ in range(2):
                    await exec_command(client, project, ["true"])
                latencies = []
                for _ in range(count):
                    t = time.perf_counter()
                    result = await exec_command(client, project, ["true"])
                    latencies.append(time.perf_counter() - t)
                    assert result.code == 0
                t = time.perf_counter()
                got = 0
                async for event in exec_stream(
                    client, project, ["head", "-c", str(stream_bytes), "/dev/zero"]
                ):
                    got += len(getattr(event, "data", b""))
                stream_s = time.perf_counter() - t
        if got != stream_bytes:
            raise RuntimeError(f"streamed {got} bytes, not {stream_bytes}")
        sample = _latencies(latencies, count)
        sample.extra["stream_mb_s"] = stream_bytes / _MIB / stream_s
        return sample

    return measure


def _idle(with_projects: bool) -> Measure:
    async def measure(url: str, count: int) -> Sample:
        me = psutil.Process()
        before = me.memory_info().rss
        n = count if with_projects else 0
        async with _host(stop_projects_on_shutdown=False) as (server, client, runner, _issuer):
            projects = [str(uuid.uuid4()) for _ in range(n)]
            half = projects[: n // 2]
            for project in projects:
                await runner.create(project)
            for batch in range(0, len(half), 10):
                await asyncio.gather(*(runner.start(p, wait=_WAIT) for p in half[batch : batch + 10]))
            # the host restarts with half of them running: reconcile adopts them
            await server.aclose()
            await server.start()
            reconcile = server.reconcile_seconds
            runner = runner_proxy(client, server.host_id, timeout=_WAIT)
            await asyncio.sleep(0.5)  # the hub's client reconnects to the restarted bus
            rest = projects[n // 2 :]
            for batch in range(0, len(rest), 10):
                await asyncio.gather(*(runner.start(p, wait=_WAIT) for p in rest[batch : batch + 10]))
            await asyncio.sleep(1.0)
            rss = max(0, me.memory_info().rss - before)
            for batch in range(0, n, 20):
                await asyncio.gather(*(runner.stop(p, wait=_WAIT) for p in projects[batch : batch + 20]))
        return Sample(rss / _MIB, {"reconcile_ms": reconcile * 1e3}, count=n, elapsed_s=reconcile)

    return measure


def host_benches() -> list[Bench]:
    rows = []
    for row, n in zip(("one", "some", "many"), batches(50), strict=True):
        rows += [
            Metric(
                f"host_start_{n}_p50", "ms", 0.0, f"{row}_p50_ms", higher_is_better=False, informational=True
            ),
            Metric(
                f"host_start_{n}_p99", "ms", 0.0, f"{row}_p99_ms", higher_is_better=False, informational=True
            ),
        ]
    return [
        Bench("host_start", "projects started at once (1, 10, 50), request -> running",
              _start(True), _start(False), tuple(rows), 50, 1, {"projects": batches(50)},
              baseline="plain spawn"),
        Bench("host_exec", "exec of `true` in a project (round trip), then streamed output",
              _exec(True), _exec(False),
              (Metric("host_exec_p50", "ms", 0.0, higher_is_better=False, informational=True),
               Metric("host_exec_p99", "ms", 0.0, "p99_ms", higher_is_better=False, informational=True),
               Metric("host_exec_stream", "MB/s", 0.0, "stream_mb_s", informational=True)),
              200, 5, {"stream_bytes": STREAM_BYTES}, baseline="local subprocess"),
        Bench("host_idle", "host RSS growth with N idle projects; reconcile of a restart with N/2 running",
              _idle(True), _idle(False),
              (Metric("host_idle_rss", "MB", 0.0, higher_is_better=False, informational=True),
               Metric("host_reconcile", "ms", 0.0, "reconcile_ms", higher_is_better=False, informational=True)),
              100, 1, {"projects": 100}, baseline="empty host"),
    ]  # fmt: skip
