"""File-server benchmarks: the file server over a real nats-server, each row against a baseline
measured in the same run.

Each run starts a :class:`host.FileServer` on its own connection (over a fresh temporary projects
root, not timed) and calls it from a second connection with :func:`host.fs`, as a user would.

Rows
----
* ``fs_read_small`` / ``fs_write_small`` (ops/s): ``read_file`` / ``write_file`` of 1 KiB,
  :data:`IN_FLIGHT` calls in flight on one project. Baseline: the same operation done locally with
  ``os`` in the bench process: ``open``/``read``/``close``; for the write, the server's own
  durability (a temporary file, ``fsync``, ``rename``, ``fsync`` of the directory). The ratio is
  what a bus round trip and a sandboxed, kernel-checked resolution cost against a local syscall;
  target :data:`SMALL_TARGET`.
* ``fs_stream_read`` / ``fs_stream_write`` (MB/s): one file of N MiB (1 GiB in a full run) streamed
  through the bus (``read_stream`` / ``write_stream``: a conat socket with flow control). Extras:
  ``rss_growth_mb``, the growth of this process's resident memory during the transfer (server and
  client both run here), reported as the ``*_rss`` rows. Baseline: the same bytes through a bare
  conat socket between two connections (same window, same 256 KiB messages, no files): the bus's
  own floor, so the ratio is what the file server adds (reading or writing, hashing, fsync).
  Target :data:`STREAM_TARGET`.
* ``fs_delta`` (ops/s): ``write_file_delta`` of a small edit to a 1 MiB text file against
  ``write_file`` of the whole edited file (both through the bus). Target :data:`DELTA_TARGET`
  (a delta should not be slower than sending the whole file).
* ``fs_watch_latency`` (``_p50``, ``_p99``, ms): a write on disk (by the bench, not the server) to
  the event at a watch socket's client. Baseline: the same write seen by an in-process inotify
  watcher (asyncinotify) on the same directory. Target :data:`WATCH_TARGET`.
* ``fs_stat_100`` (ops/s): 1,000 concurrent ``stat`` calls spread over 100 projects. Baseline: the
  same 1,000 concurrent requests to a trivial nats-py responder on the same server (the bus's own
  floor). Target :data:`STAT_TARGET`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import diff_match_patch as dmp_module
import nats
from asyncinotify import Inotify, Mask
from nats.aio.msg import Msg as NatsMsg

import conat
from host import FileServer, FileServerConfig, FsClient, fs

from ._harness import CPU_KEY, Bench, Measure, Metric, Sample, Stamp, percentile
from ._persist import _workdir

__all__ = ["fs_benches"]

IN_FLIGHT: Final = 16
SMALL: Final = 1024
MB: Final = 1 << 20
SMALL_TARGET: Final = 0.02
STREAM_TARGET: Final = 0.7
DELTA_TARGET: Final = 1.0
WATCH_TARGET: Final = 20.0
STAT_TARGET: Final = 0.2
WINDOW: Final = 8 << 20
"""The transfer sockets' window (as the file server's), for the bare-socket baseline."""
PROJECTS: Final = 100
STATS: Final = 1000
_PAYLOAD: Final = os.urandom(SMALL)


class FsBenchError(RuntimeError):
    pass


def _rate(count: float, spent: tuple[float, float], extra: dict[str, float] | None = None) -> Sample:
    wall, cpu = spent
    return Sample(count / wall, {CPU_KEY: cpu / max(count, 1) * 1e6, **(extra or {})}, int(count), wall)


@contextlib.asynccontextmanager
async def _server(url: str, root: Path) -> AsyncIterator[tuple[FileServer, conat.Client]]:
    """A file server on its own connection; yields it and a second connection for the client."""
    config = FileServerConfig(projects=str(root / "projects" / "[project_id]"), rate=1e9)
    async with (
        await conat.connect(url, name="bench-fs-server") as service,
        FileServer(service, config) as server,
        await conat.connect(url, name="bench-fs-client") as client,
    ):
        yield server, client


async def _project(server: FileServer, client: conat.Client) -> tuple[FsClient, Path]:
    project = str(uuid.uuid4())
    root = await server.create_project(project)
    return fs(client, project, timeout=120), root


async def _in_flight(count: int, op: object) -> tuple[float, float]:
    per = max(1, count // IN_FLIGHT)

    async def worker(n: int) -> None:
        for _ in range(n):
            await op()  # type: ignore[operator]

    await asyncio.gather(*(worker(max(1, per // 10)) for _ in range(IN_FLIGHT)))
    t0 = Stamp()
    await asyncio.gather(*(worker(per) for _ in range(IN_FLIGHT)))
    return Stamp().since(t0)


# ---- small files ---------------------------------------------------------------------------------


def _small(write: bool) -> tuple[Measure, Measure]:
    async def conat_side(url: str, count: int) -> Sample:
        with _workdir() as d:
            async with _server(url, d) as (server, client):
                f, root = await _project(server, client)
                (root / "small").write_bytes(_PAYLOAD)

                async def op() -> None:
                    if write:
                        await f.write_file("small", _PAYLOAD)
                    elif len(await f.read_file("small")) != SMALL:
                        raise FsBenchError("read_file returned the wrong size")

                spent = await _in_flight(count, op)
        return _rate(max(1, count // IN_FLIGHT) * IN_FLIGHT, spent)

    async def local_side(url: str, count: int) -> Sample:
        with _workdir() as d:
            path = d / "small"
            path.write_bytes(_PAYLOAD)
            dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                t0 = Stamp()
                for i in range(count):
                    if write:
                        temp = d / f".tmp{i}"
                        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                        os.write(fd, _PAYLOAD)
                        os.fsync(fd)
                        os.close(fd)
                        os.rename(temp, path)
                        os.fsync(dirfd)
                    else:
                        fd = os.open(path, os.O_RDONLY)
                        os.read(fd, 1 << 20)
                        os.close(fd)
                spent = Stamp().since(t0)
            finally:
                os.close(dirfd)
        return _rate(count, spent)

    return conat_side, local_side


# ---- streams -------------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.asynccontextmanager
async def _rss_peak() -> AsyncIterator[list[int]]:
    """Samples this process's RSS every 20 ms; yields [start, peak] (peak filled at the end)."""
    box = [_rss(), _rss()]

    async def sample() -> None:
        while True:
            box[1] = max(box[1], _rss())
            await asyncio.sleep(0.02)

    task = asyncio.create_task(sample())
    try:
        yield box
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        box[1] = max(box[1], _rss())


def _chunks(mib: int) -> Iterator[bytes]:
    block = os.urandom(MB)
    for _ in range(mib):
        yield block


def _fill(path: Path, mib: int) -> None:
    with open(path, "wb") as out:
        out.writelines(_chunks(mib))


def _stream(write: bool) -> tuple[Measure, Measure]:
    async def conat_side(url: str, mib: int) -> Sample:
        with _workdir() as d:
            async with _server(url, d) as (server, client):
                f, root = await _project(server, client)
                if not write:
                    await asyncio.to_thread(_fill, root / "big", mib)
                async with _rss_peak() as rss:
                    t0 = Stamp()
                    if write:
                        result = await f.write_stream("big", _chunks(mib))
                        size = result.size
                    else:
                        size = 0
                        async for chunk in f.read_stream("big"):
                            size += len(chunk)
                    spent = Stamp().since(t0)
                if size != mib * MB:
                    raise FsBenchError(f"streamed {size} bytes, not {mib} MiB")
        return _rate(mib * MB / 1e6, spent, {"rss_growth_mb": (rss[1] - rss[0]) / 1e6})

    async def socket_side(url: str, mib: int) -> Sample:
        """The same bytes through a bare conat socket (same window and chunk size): the bus's floor."""
        chunk = 256 << 10
        block = os.urandom(chunk)
        async with (
            await conat.connect(url, name="bench-fs-sock-a") as a,
            await conat.connect(url, name="bench-fs-sock-b") as b,
        ):
            pattern = f"bench.fs.{secrets.token_hex(4)}.*"
            async with await b.socket_listen(pattern, window=WINDOW) as listener:
                sock = await a.socket_connect(pattern.replace("*", "x"), window=WINDOW)
                async with sock:
                    conn = await listener.accept(timeout=30)
                    sender, receiver = (sock, conn) if write else (conn, sock)
                    total = mib * MB

                    async def receive() -> None:
                        got = 0
                        while got < total:
                            got += len((await receiver.recv(timeout=60)).raw)

                    async with _rss_peak() as rss:
                        t0 = Stamp()
                        reader = asyncio.create_task(receive())
                        for _ in range(total // chunk):
                            await sender.send(block, encoding="raw")
                        await reader
                        spent = Stamp().since(t0)
        return _rate(mib * MB / 1e6, spent, {"rss_growth_mb": (rss[1] - rss[0]) / 1e6})

    return conat_side, socket_side


# ---- delta ----------------------------------------------------------------------------------------


def _delta() -> tuple[Measure, Measure]:
    line = "the quick brown fox jumps over the lazy dog 0123456789\n"
    base = (line * (MB // len(line) + 1))[:MB]

    async def run(url: str, count: int, delta: bool) -> Sample:
        dmp = dmp_module.diff_match_patch()
        with _workdir() as d:
            async with _server(url, d) as (server, client):
                f, root = await _project(server, client)
                (root / "doc").write_text(base)
                text = base
                t0 = Stamp()
                for i in range(count):
                    edited = text[: MB // 2] + f"edit {i} " + text[MB // 2 :]
                    if delta:
                        patch = dmp.patch_toText(dmp.patch_make(text, edited))
                        await f.write_file_delta("doc", patch, hashlib.sha256(text.encode()).hexdigest())
                    else:
                        await f.write_file("doc", edited)
                    text = edited
                spent = Stamp().since(t0)
                if (root / "doc").read_text() != text:
                    raise FsBenchError("the file is not the last edit")
        return _rate(count, spent)

    async def conat_side(url: str, count: int) -> Sample:
        return await run(url, count, True)

    async def full_side(url: str, count: int) -> Sample:
        return await run(url, count, False)

    return conat_side, full_side


# ---- watch latency --------------------------------------------------------------------------------


def _latency(samples: list[float], count: int, spent: tuple[float, float]) -> Sample:
    ms = sorted(s * 1000 for s in samples)
    return Sample(
        percentile(ms, 0.5),
        {"p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99), CPU_KEY: spent[1] / count * 1e6},
        count,
        spent[0],
    )


def _watch() -> tuple[Measure, Measure]:
    async def conat_side(url: str, count: int) -> Sample:
        with _workdir() as d:
            async with _server(url, d) as (server, client):
                f, root = await _project(server, client)
                samples: list[float] = []
                async with await f.watch("") as watch:
                    await watch.next(timeout=30)
                    t0 = Stamp()
                    for i in range(count):
                        name = f"w{i}"
                        start = time.perf_counter()
                        (root / name).write_bytes(b"x")
                        while (await watch.next(timeout=30)).path != name:
                            pass
                        samples.append(time.perf_counter() - start)
                    spent = Stamp().since(t0)
        return _latency(samples, count, spent)

    async def inotify_side(url: str, count: int) -> Sample:
        with _workdir() as d, Inotify() as inotify:
            inotify.add_watch(d, Mask.CREATE | Mask.MODIFY)
            samples: list[float] = []
            t0 = Stamp()
            for i in range(count):
                name = f"w{i}"
                start = time.perf_counter()
                (d / name).write_bytes(b"x")
                while str((await asyncio.wait_for(inotify.get(), 30)).name) != name:
                    pass
                samples.append(time.perf_counter() - start)
            spent = Stamp().since(t0)
        return _latency(samples, count, spent)

    return conat_side, inotify_side


# ---- 1,000 concurrent stats over 100 projects --------------------------------------------------------


def _stats() -> tuple[Measure, Measure]:
    async def conat_side(url: str, rounds: int) -> Sample:
        with _workdir() as d:
            async with _server(url, d) as (server, client):
                clients = [(await _project(server, client))[0] for _ in range(PROJECTS)]

                async def burst() -> None:
                    await asyncio.gather(*(clients[i % PROJECTS].stat("") for i in range(STATS)))

                await burst()
                t0 = Stamp()
                for _ in range(rounds):
                    await burst()
                spent = Stamp().since(t0)
        return _rate(rounds * STATS, spent)

    async def nats_side(url: str, rounds: int) -> Sample:
        server = await nats.connect(url, name="bench-fs-echo", allow_reconnect=False)
        caller = await nats.connect(url, name="bench-fs-caller", allow_reconnect=False)
        try:
            subject = f"bench.fs.{secrets.token_hex(4)}"

            async def answer(msg: NatsMsg) -> None:
                await msg.respond(b"ok")

            await server.subscribe(subject, cb=answer)
            await server.flush()

            async def burst() -> None:
                await asyncio.gather(*(caller.request(subject, b"stat", timeout=60) for _ in range(STATS)))

            await burst()
            t0 = Stamp()
            for _ in range(rounds):
                await burst()
            spent = Stamp().since(t0)
        finally:
            await caller.close()
            await server.close()
        return _rate(rounds * STATS, spent)

    return conat_side, nats_side


def fs_benches() -> list[Bench]:
    """The file-server rows, in table order."""
    read_c, read_l = _small(write=False)
    write_c, write_l = _small(write=True)
    sread_c, sread_l = _stream(write=False)
    swrite_c, swrite_l = _stream(write=True)
    delta_c, delta_f = _delta()
    watch_c, watch_i = _watch()
    stat_c, stat_n = _stats()
    mib = {"unit_of_count": "MiB"}
    return [
        Bench("fs_read_small", "read_file of 1 KiB through the bus vs os.read", read_c, read_l,
              (Metric("fs_read_small", "ops/s", SMALL_TARGET),), 3_000, 300, baseline="local os"),
        Bench("fs_write_small", "atomic write_file of 1 KiB vs local temp+fsync+rename", write_c, write_l,
              (Metric("fs_write_small", "ops/s", SMALL_TARGET),), 1_000, 48, baseline="local os"),
        Bench("fs_stream_read", "read_stream of N MiB vs the same bytes over a bare socket", sread_c, sread_l,
              (Metric("fs_stream_read", "MB/s", STREAM_TARGET),
               Metric("fs_stream_read_rss", "MB", 0.0, "rss_growth_mb", informational=True)),
              1024, 8, mib, baseline="socket"),
        Bench("fs_stream_write", "write_stream of N MiB vs the same bytes over a bare socket", swrite_c, swrite_l,
              (Metric("fs_stream_write", "MB/s", STREAM_TARGET),
               Metric("fs_stream_write_rss", "MB", 0.0, "rss_growth_mb", informational=True)),
              1024, 8, mib, baseline="socket"),
        Bench("fs_delta", "write_file_delta of a small edit to 1 MiB vs write_file of it", delta_c, delta_f,
              (Metric("fs_delta", "ops/s", DELTA_TARGET),), 50, 5, baseline="full write"),
        Bench("fs_watch_latency", "disk write to watch event at the client vs local inotify", watch_c, watch_i,
              (Metric("fs_watch_latency_p50", "ms", WATCH_TARGET, "p50_ms", higher_is_better=False),
               Metric("fs_watch_latency_p99", "ms", WATCH_TARGET, "p99_ms", higher_is_better=False)),
              500, 30, baseline="inotify"),
        Bench("fs_stat_100", "1,000 concurrent stat over 100 projects vs nats-py echo", stat_c, stat_n,
              (Metric("fs_stat_100", "ops/s", STAT_TARGET),), 5, 1, {"unit_of_count": "bursts"}),
    ]  # fmt: skip
