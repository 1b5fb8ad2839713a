"""Streamed reads and writes: any size, atomic, bounded memory, errors with codes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import conat
from host import FsClient, FsError, Stat, fs

pytestmark = pytest.mark.anyio

MB = 1 << 20


def pattern(size: int, seed: int = 7) -> Iterator[bytes]:
    """Deterministic pseudo-random chunks (never all in memory)."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MB // 32)
    for start in range(0, size, MB):
        yield block[: min(MB, size - start)]


async def test_stream_roundtrip_and_integrity(f: FsClient, root: Path) -> None:
    size = 5 * MB + 123
    result = await f.write_stream("big.bin", pattern(size))
    expected = hashlib.sha256(b"".join(pattern(size))).hexdigest()
    assert (result.size, result.sha256) == (size, expected)
    assert hashlib.sha256((root / "big.bin").read_bytes()).hexdigest() == expected
    got = hashlib.sha256()
    async for chunk in f.read_stream("big.bin"):
        got.update(chunk)
    assert got.hexdigest() == expected
    st, rest = await f.stat_and_stream("big.bin")
    assert isinstance(st, Stat) and st.size == size
    assert sum([len(c) async for c in rest]) == size
    local = root.parent / "local.bin"
    assert await f.download("big.bin", local) == size
    assert (await f.upload(local, "copy.bin")).sha256 == expected


async def test_a_write_is_visible_only_when_complete(f: FsClient, root: Path) -> None:
    (root / "doc").write_text("old")
    gate = asyncio.Event()
    seen: list[bytes] = []

    async def chunks() -> object:
        yield b"new-1 "
        await gate.wait()
        yield b"new-2"

    writer = asyncio.create_task(f.write_stream("doc", chunks()))  # type: ignore[arg-type]
    for _ in range(50):
        await asyncio.sleep(0.02)
        seen.append((root / "doc").read_bytes())
    assert set(seen) == {b"old"}
    assert [n for n in os.listdir(root) if n != "doc"] == []  # the partial file has no name
    gate.set()
    assert (await writer).size == 11
    assert (root / "doc").read_bytes() == b"new-1 new-2"


async def test_an_aborted_write_changes_nothing(f: FsClient, root: Path) -> None:
    (root / "doc").write_text("old")

    async def failing() -> object:
        yield b"partial"
        raise RuntimeError("the client gave up")

    with pytest.raises(RuntimeError):
        await f.write_stream("doc", failing())  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    assert (root / "doc").read_text() == "old"
    assert sorted(os.listdir(root)) == ["doc"]


async def test_stream_errors_have_codes(f: FsClient, root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(FsError) as missing:  # typed, rebuilt from the transfer's failure frame
        await anext(f.read_stream("missing"))
    assert (missing.value.code, missing.value.path) == ("ENOENT", "missing")
    assert isinstance(missing.value, conat.RemoteError)
    with pytest.raises(conat.RemoteError) as info:
        await anext(f.read_stream("d"))
    assert info.value.code == "EISDIR"
    with pytest.raises(conat.RemoteError) as info:
        await f.write_stream("nodir/x", [b"x"])
    assert info.value.code == "ENOENT"
    with pytest.raises(conat.RemoteError) as info:
        await f.write_stream("../x", [b"x"])
    assert info.value.code == "OUTSIDE_ROOT"


def vm_hwm(pid: int) -> int:
    """Peak resident memory of process ``pid`` (bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_64mb_transfer_keeps_the_server_memory_bounded(
    client: conat.Client, nats_server: conat.NatsServer, tmp_path: Path
) -> None:
    """The file server runs in its own process (``conat fs serve``): its peak RSS grows by a few
    chunks and socket windows, never by the 64 MB file, in either direction."""
    projects = tmp_path / "p" / "[project_id]"
    project = str(uuid.uuid4())
    (tmp_path / "p" / project).mkdir(parents=True)
    args = [sys.executable, "-m", "conat.cli", "--url", nats_server.url, "--json", "fs", "serve"]
    proc = await asyncio.create_subprocess_exec(
        *args, "--projects", str(projects), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert b'"ready"' in line, line
        f = fs(client, project, timeout=60)
        await f.write_stream("warm", pattern(2 * MB))  # imports, threads, first buffers
        async for _ in f.read_stream("warm"):
            pass
        before = vm_hwm(proc.pid)
        size = 64 * MB
        result = await f.write_stream("huge", pattern(size, 1))
        total = 0
        async for chunk in f.read_stream("huge"):
            total += len(chunk)
        grown = vm_hwm(proc.pid) - before
    finally:
        proc.terminate()
        await proc.wait()
    assert result.size == size == total == (tmp_path / "p" / project / "huge").stat().st_size
    assert grown < 40 * MB, grown
