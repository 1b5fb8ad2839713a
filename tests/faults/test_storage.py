"""Storage faults under the persist service: a full file system, a read-only one, a corrupted file.

The storage root is a small tmpfs of its own (``mount -t tmpfs -o size=...``): it fills up for real
and can be remounted read-only (as root, ``chmod`` would not stop a write). Rules: a write the
storage refuses is answered ``storage`` (nothing half-written, the service keeps serving), every
write acknowledged before stays readable, and writes resume once there is room again (or the file
system is writable again), with no gap in the seqs; a service whose root is read-only refuses to
start, saying so; a corrupted file is answered ``corrupt`` and
quarantined, and the other streams are unaffected.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import conat
from conat import NatsServer
from persist import AStream, Corrupt, PersistServer, Placement, PlacementConfig, StorageError

from .conftest import report

pytestmark = pytest.mark.anyio

VALUE = b"v" * 8192


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.asynccontextmanager
async def persist_on(url: str, root: Path) -> AsyncIterator[conat.Client]:
    """A persist service over ``root``, and a client of it."""
    async with (
        await conat.connect(url) as service_client,
        PersistServer(service_client, Placement(PlacementConfig(root=str(root)))),
        await conat.connect(url) as client,
    ):
        yield client


async def _stored(stream: AStream) -> list[int]:
    return [m.seq for batch in [b async for b in stream.get_all()] for m in batch]


async def test_a_full_file_system(nats_server: NatsServer, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "2m") as root:
        ballast = root / "ballast"
        ballast.write_bytes(b"\0" * 512 * 1024)
        async with persist_on(nats_server.url, root / "sync") as client:
            stream = AStream(client, f"project-{uuid.uuid4()}", "log", encoding="raw", timeout=10)
            acked: list[int] = []
            refusal: StorageError | None = None
            for _ in range(1000):
                try:
                    acked.append((await stream.publish(VALUE)).seq)
                except StorageError as e:
                    refusal = e
                    break
            assert refusal is not None, "the file system never filled up"
            with pytest.raises(StorageError):  # still full: refused again, not stuck
                await stream.publish(VALUE)
            assert await _stored(stream) == acked  # everything acknowledged is there, nothing else
            ballast.unlink()  # room again
            after = [(await stream.publish(VALUE)).seq for _ in range(10)]
            stored = await _stored(stream)
    report(
        "disk full",
        acknowledged_before=len(acked),
        refused_with=refusal.code,
        detail=refusal.detail[:60],
        written_after_room=len(after),
        stored=len(stored),
    )
    assert refusal.code == "storage"
    assert stored == acked + after == list(range(1, len(stored) + 1))  # no gap, no loss


async def test_read_only_storage(nats_server: NatsServer, tmp_path: Path) -> None:
    """A storage root that became read-only: the kernel refuses to remount a file system read-only
    while files are open for writing on it, so the service meets it at its (re)start, as after a
    reboot on a damaged disk. It refuses to start, saying why (it cannot even take the root's
    lock), instead of serving refusals; once the root is writable again, nothing acknowledged is
    missing and writes go on."""
    scope = f"project-{uuid.uuid4()}"
    with tmpfs(tmp_path / "ro", "8m") as root:
        async with persist_on(nats_server.url, root / "sync") as client:
            stream = AStream(client, scope, "log", timeout=10)
            acked = [(await stream.publish(i)).seq for i in range(20)]
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        try:
            with pytest.raises(StorageError) as refused:
                async with persist_on(nats_server.url, root / "sync"):
                    pass
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
        async with persist_on(nats_server.url, root / "sync") as client:
            stream = AStream(client, scope, "log", timeout=10)
            after = [(await stream.publish(i)).seq for i in range(5)]
            stored = await _stored(stream)
    report(
        "read-only storage",
        acknowledged_before=len(acked),
        start_refused_with=refused.value.code,
        why=str(refused.value)[-60:],
        written_after_rw=len(after),
    )
    assert refused.value.code == "storage" and "Read-only file system" in str(refused.value)
    assert stored == acked + after == list(range(1, 26))


async def test_a_corrupted_sqlite_file(nats_server: NatsServer, tmp_path: Path) -> None:
    scope = f"project-{uuid.uuid4()}"
    root = tmp_path / "sync"
    async with persist_on(nats_server.url, root) as client:
        for name in ("broken", "healthy"):
            stream = AStream(client, scope, name, timeout=10)
            for i in range(50):
                await stream.publish(i)
    [path] = root.rglob("broken.db")
    with path.open("r+b") as f:  # the service is stopped: its files are closed, the WAL folded in
        f.seek(0)
        f.write(b"this is not a database" * 10)
    async with persist_on(nats_server.url, root) as client:
        with pytest.raises(Corrupt) as refused:
            await AStream(client, scope, "broken", timeout=10).publish("x")
        with pytest.raises(Corrupt):  # reads too, and it stays refused
            await _stored(AStream(client, scope, "broken", timeout=10))
        healthy = AStream(client, scope, "healthy", timeout=10)
        await healthy.publish(50)
        stored = await _stored(healthy)
    moved = sorted(p.name for p in path.parent.iterdir() if "corrupt" in p.name or "quarantined" in p.name)
    report("corrupted SQLite file", refused_with=refused.value.code, moved_aside=moved, healthy=len(stored))
    assert refused.value.code == "corrupt"
    assert any(".corrupt-" in name for name in moved)  # kept, never deleted
    assert stored == list(range(1, 52))
