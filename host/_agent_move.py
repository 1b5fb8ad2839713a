"""Moving a project's home between hosts (and snapshots): one archive (or btrfs send stream),
streamed over a conat socket.

**The archive** (:func:`build_archive`): an uncompressed tar of the project's home, symlinks kept
as links (never followed, not even in a race: every file is opened beneath its directory's
descriptor with ``O_NOFOLLOW``). Each SQLite file (the project's persist stores, its bootlog) is
archived as one consistent file: its bytes and its WAL are copied aside, checked
(``PRAGMA quick_check``) and folded into one file by SQLite's backup API; copying a WAL database's
main file alone can lose everything in its WAL. During a move the project is stopped and writes
are blocked, so the copy is exact; a clone or snapshot of a running project retries a store that
changed under it and gives up (:class:`StoreChanged`) rather than archive a torn one.

**The stream.** The source's agent connects to the *destination's* bus with a project token
master minted for that bus (grant: the project's own subjects) and opens a socket on
``move.project-<p>``, where the destination's agent listens (:class:`Incoming`). The destination
first says which formats it takes (:class:`Welcome`): ``btrfs`` where its homes are btrfs
subvolumes, ``tar`` always. The source sends a ``btrfs send`` stream of its home if both sides
keep homes as subvolumes (:mod:`host._btrfs_move`), else the archive: an :class:`Offer` (format,
transfer id, size, SHA-256), then the bytes in 1 MiB messages (the socket's flow control paces
them), and waits for the :class:`Ack`. A send stream is checked as it arrives
(:class:`~host._btrfs_stream.SendStreamCheck`) and refused at its first command that could reach
beyond the project. The destination accepts only a transfer id
master announced with ``move_in`` for that project, counts and hashes what arrives into a staging
file, and refuses (nothing unpacked) if the size or SHA-256 differ. Then it creates the project
through its runner, unpacks into the new home with the same filter as the runner's imports (no
absolute or ``..`` paths, nothing written through links, no devices, no setuid bits), gives the
files to the project's uid, and answers ``ok`` with the digest it computed.

A marker file ``moves/<p>.json`` remembers which transfer created the project, so an abort of
that transfer (a rolled-back move) deletes exactly that copy and an abort of any other transfer
does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import msgspec

import conat
from conat.platform import BadArgument, Limits, SnapshotInfo, TransferResult
from persist import PersistServer
from subjects import project_scope, service_subject

from ._btrfs_move import OUTGOING, build_stream, install_stream, is_subvolume, make_home, remove_tree
from ._btrfs_stream import SendStreamCheck
from ._errors import StoreChanged
from ._projects import HostProjects, _import_filter
from ._runner import runner_proxy

__all__ = [
    "Incoming",
    "build_archive",
    "forget_streams",
    "move_subject",
    "send_archive",
    "snapshot",
    "stream_names",
]

log = logging.getLogger("conat.host.move")

CHUNK: Final = 1024 * 1024
MOVE_PATTERN: Final = "move.*"
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_COMPANIONS: Final = ("-wal", "-shm", "-journal")
_ACK_TIMEOUT: Final = 600.0
_OFFER_TIMEOUT: Final = 6 * 3600.0
"""The source builds its archive (or stream) after the destination's welcome: a dead source is
noticed by the socket's keepalives long before this."""
_PERSIST_DIR: Final = ".local/share/conat/persist"
_DROP_TIMEOUT: Final = 5.0
PEER_TIMEOUT: Final = 10.0
"""A transfer whose other end is silent this long fails (and the move rolls back): both ends
acknowledge continuously while data flows, so only a dead peer is this quiet."""
KEEPALIVE: Final = 2.0
_WATCH_STEP: Final = 0.5
_T = TypeVar("_T")


class Welcome(msgspec.Struct, frozen=True, kw_only=True):
    """The destination's first message: the formats it takes (``btrfs`` where its homes are
    subvolumes; ``tar`` always)."""

    formats: list[str]


class Offer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    transfer_id: str
    project_id: str
    bytes: int
    sha256: str
    files: int = 0
    format: Literal["tar", "btrfs"] = "tar"


class Ack(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    bytes: int = 0
    sha256: str = ""
    error: str = ""


def move_subject(project_id: str) -> str:
    """``move.project-<p>``: where a project's archive is sent on its destination's bus."""
    return service_subject("move", project_scope(project_id))


def _copy_fd(fd: int, out: Path) -> None:
    """Copy the whole file open at ``fd`` (from its start, whatever its offset) to ``out``."""
    with out.open("wb") as dst:
        offset = 0
        while block := os.pread(fd, CHUNK, offset):
            dst.write(block)
            offset += len(block)


def _open_beneath(dirfd: int, name: str) -> int | None:
    """A regular file of the walked directory, opened without following a link (None otherwise)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _store_copy(dirfd: int, name: str, fd: int, scratch: Path) -> Path:
    """A consistent single-file copy of the SQLite store ``name`` (its file and WAL copied as
    bytes, checked, then backed up by SQLite into one file); retried while it changes."""
    for _attempt in range(3):
        work = Path(tempfile.mkdtemp(dir=scratch))
        _copy_fd(fd, work / "store.db")
        wal = _open_beneath(dirfd, name + "-wal")
        if wal is not None:
            try:
                _copy_fd(wal, work / "store.db-wal")
            finally:
                os.close(wal)
        try:
            source = sqlite3.connect(work / "store.db")
            try:
                if source.execute("PRAGMA quick_check").fetchone() == ("ok",):
                    target = sqlite3.connect(work / "single.db")
                    try:
                        source.backup(target)
                    finally:
                        target.close()
                    return work / "single.db"
            finally:
                source.close()
        except sqlite3.DatabaseError:
            pass
        shutil.rmtree(work, ignore_errors=True)
    raise StoreChanged(name)


def _member(dirfd: int, name: str, arcname: str) -> tarfile.TarInfo | None:
    """The tar header of a directory or symlink entry (None for other non-regular files)."""
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    info = tarfile.TarInfo(arcname)
    info.mode, info.uid, info.gid, info.mtime = (
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        int(st.st_mtime),
    )
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dirfd)
    else:
        return None
    return info


def build_archive(home: Path, out: Path) -> TransferResult:
    """Write the archive of ``home`` to ``out`` (see the module docstring); blocking.

    The tree is walked with directory descriptors (``os.fwalk``) and every file is opened relative
    to its directory without following links, so a project that swaps a file or directory for a
    symlink during the copy gets the link archived, never what it points to.
    """
    began = time.monotonic()
    files = 0
    with (
        tempfile.TemporaryDirectory(prefix=".conat-archive-", dir=out.parent) as scratch,
        tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for directory, dirnames, filenames, dirfd in os.fwalk(home, follow_symlinks=False):
            dirnames.sort()
            base = Path(directory).relative_to(home)
            names = set(filenames)
            for name in sorted(dirnames + filenames):
                arcname = str(base / name)
                if any(name.endswith(c) and name[: -len(c)] in names for c in _COMPANIONS):
                    continue  # a store's WAL or journal: part of the store's copy
                fd = _open_beneath(dirfd, name) if name in names else None
                if fd is None:
                    info = _member(dirfd, name, arcname)
                    if info is not None:
                        tar.addfile(info)
                        files += 1
                    continue
                try:
                    with os.fdopen(os.dup(fd), "rb") as f:
                        info = tar.gettarinfo(arcname=arcname, fileobj=f)
                        if os.pread(fd, 16, 0) == _SQLITE_MAGIC or f"{name}-wal" in names:
                            copy = _store_copy(dirfd, name, fd, Path(scratch))
                            info.size = copy.stat().st_size
                            with copy.open("rb") as c:
                                tar.addfile(info, c)
                            shutil.rmtree(copy.parent, ignore_errors=True)
                        else:
                            tar.addfile(info, f)
                finally:
                    os.close(fd)
                files += 1
    digest = hashlib.sha256()
    with out.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return TransferResult(
        bytes=out.stat().st_size, sha256=digest.hexdigest(), files=files, seconds=time.monotonic() - began
    )


def _extract(archive: Path, into: Path) -> None:
    into.mkdir(mode=0o700)
    with tarfile.open(archive, "r") as tar:
        tar.extractall(into, filter=_import_filter)


def _chown(home: Path, uid: int) -> None:
    for path in [home, *home.rglob("*")]:
        with contextlib.suppress(OSError):
            os.lchown(path, uid, uid)


def stream_names(home: Path) -> list[str]:
    """The project's persist streams (stores and bootlog): the ``.db`` files under its home."""
    base = home / _PERSIST_DIR
    return [str(p.relative_to(base))[: -len(".db")] for p in base.rglob("*.db")] if base.is_dir() else []


async def forget_streams(
    persist: PersistServer | None, home: Path, project_id: str, names: list[str] | None = None
) -> None:
    """Close the host's persist streams of ``project_id`` (``names``, default: those of ``home``),
    so none keeps a file that a move or a delete removed or replaced: the next use opens what is
    on disk then."""
    if persist is None:
        return
    for name in stream_names(home) if names is None else names:
        path = f"projects/{project_id}/{name}"
        if persist.store.is_open(path):
            try:
                await asyncio.wait_for(persist.store.drop(path), _DROP_TIMEOUT)
            except (TimeoutError, conat.ConatError) as e:
                log.warning("stream %s of project %s stays open: %s", name, project_id, e)


async def snapshot(projects: HostProjects, project_id: str, name: str) -> SnapshotInfo:
    """An archive of the project's home kept on this host under ``snapshots/<p>/<name>.tar``."""
    home = projects.home(project_id)
    if not home.is_dir():
        raise BadArgument("project_id", f"project {project_id} has no home on this host")
    folder = projects.config.data / "snapshots" / project_id
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    result = await asyncio.to_thread(build_archive, home, folder / f"{name}.tar")
    return SnapshotInfo(name=name, created=time.time(), bytes=result.bytes, sha256=result.sha256)


async def _watched(client: conat.Client, work: Awaitable[_T], what: str, limit: float) -> _T:
    """``work``, failed if ``client``'s connection stays down for ``limit`` seconds.

    A socket pauses its dead-peer detection while its bus connection is down (it survives a
    broker restart), so a transfer to a host whose whole bus died would wait forever: this bounds
    it (and the move then rolls back).
    """
    task = asyncio.ensure_future(work)
    down_since: float | None = None
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_WATCH_STEP)
            if done:
                return task.result()
            if client.state is conat.ClientState.CONNECTED:
                down_since = None
            elif down_since is None:
                down_since = time.monotonic()
            elif time.monotonic() - down_since > limit:
                raise conat.ConatError(f"{what}: the destination's bus has been unreachable for {limit:g}s")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def send_archive(
    projects: HostProjects,
    project_id: str,
    transfer_id: str,
    url: str,
    token: str,
    target: str,
    progress: Callable[[str, float], Awaitable[None]],
    peer_timeout: float = PEER_TIMEOUT,
) -> TransferResult:
    """Stream ``project_id``'s home to the host at ``url`` as project ``target``: a btrfs send
    stream if the home is a subvolume and the destination takes one, else the archive; fails once
    the destination has been silent (or its bus unreachable) for ``peer_timeout``."""
    home = projects.home(project_id)
    if not home.is_dir():
        raise BadArgument("project_id", f"project {project_id} has no home on this host")
    staging = projects.config.data / "moves"
    staging.mkdir(exist_ok=True, mode=0o700)
    began = time.monotonic()
    async with await conat.connect(url, credentials=token, name="conat-move-out") as client:
        sending = _send(client, home, staging, transfer_id, target, progress, peer_timeout)
        built, ack = await _watched(client, sending, "transfer", peer_timeout)
    if not ack.ok:
        raise conat.ConatError(f"the destination refused the {built.format} transfer: {ack.error}")
    if (ack.bytes, ack.sha256) != (built.bytes, built.sha256):
        raise conat.ConatError(
            f"checksum mismatch: sent {built.bytes} bytes sha256 {built.sha256}, got {ack.bytes} {ack.sha256}"
        )
    return TransferResult(
        bytes=built.bytes,
        sha256=built.sha256,
        files=built.files,
        seconds=time.monotonic() - began,
        format=built.format,
    )


async def _send(
    client: conat.Client, home: Path, staging: Path, transfer_id: str, target: str,
    progress: Callable[[str, float], Awaitable[None]], peer_timeout: float,
) -> tuple[Offer, Ack]:  # fmt: skip
    sock = await client.socket_connect(
        move_subject(target),
        timeout=30.0,
        keepalive=min(KEEPALIVE, peer_timeout / 3),
        peer_timeout=peer_timeout,
    )
    out: Path | None = None
    try:
        welcome = msgspec.msgpack.decode((await sock.recv(timeout=60.0)).raw, type=Welcome)
        stream = "btrfs" in welcome.formats and await asyncio.to_thread(is_subvolume, home)
        if stream:
            out = staging / f"out-{transfer_id}.btrfs"
            built = await asyncio.to_thread(build_stream, home, out)
            await progress(f"btrfs send stream ready: {built.bytes} bytes", 30)
        else:
            out = staging / f"out-{transfer_id}.tar"
            built = await asyncio.to_thread(build_archive, home, out)
            await progress(f"archive ready: {built.files} files, {built.bytes} bytes", 30)
        offer = Offer(transfer_id=transfer_id, project_id=target, bytes=built.bytes, sha256=built.sha256,
                      files=built.files, format="btrfs" if stream else "tar")  # fmt: skip
        await sock.send(msgspec.msgpack.encode(offer), encoding="raw")
        sent, reported = 0, 0.0
        with out.open("rb") as f:
            while block := await asyncio.to_thread(f.read, CHUNK):
                await sock.send(block, encoding="raw")
                sent += len(block)
                share = sent / max(built.bytes, 1)
                if share - reported >= 0.1:
                    reported = share
                    await progress(f"sent {sent} of {built.bytes} bytes", 30 + 40 * share)
        return offer, msgspec.msgpack.decode((await sock.recv(timeout=_ACK_TIMEOUT)).raw, type=Ack)
    finally:
        if out is not None:
            out.unlink(missing_ok=True)
        with contextlib.suppress(conat.ConatError):
            await sock.aclose(timeout=5.0)


class Incoming:
    """The destination side: expected transfers, the socket server on ``move.*``, aborts."""

    def __init__(
        self, projects: HostProjects, client: conat.Client, persist: PersistServer | None,
        peer_timeout: float = PEER_TIMEOUT,
    ) -> None:  # fmt: skip
        self.projects = projects
        self.client = client
        self.persist = persist
        self.peer_timeout = peer_timeout
        self.expected: dict[str, tuple[str, Limits | None]] = {}
        self.folder = projects.config.data / "moves"
        self._server: conat.SocketServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.folder.mkdir(exist_ok=True, mode=0o700)
        await asyncio.to_thread(self._sweep)
        self._server = await self.client.socket_listen(
            MOVE_PATTERN, keepalive=min(KEEPALIVE, self.peer_timeout / 3), peer_timeout=self.peer_timeout
        )
        self._task = asyncio.ensure_future(self._accept(self._server))

    async def _accept(self, server: conat.SocketServer) -> None:
        async for sock in server:
            task = asyncio.ensure_future(self._receive(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _sweep(self) -> None:
        """What transfers of an earlier run left (the agent died during them): none runs before
        :meth:`start`, and a rolled-back move's ``move_abort`` finds nothing left to drop."""
        if self.projects.subvolume_homes:  # (found out here, in a thread: it runs a command)
            log.info("project homes are btrfs subvolumes: moves between such hosts use btrfs send")
        for leftover in [*self.folder.glob("in-*"), *self.folder.glob("out-*")]:
            leftover.unlink(missing_ok=True)
        projects = self.projects.config.projects
        for partial in [*projects.glob(".incoming-*"), *projects.glob(f"{OUTGOING}*")]:
            remove_tree(partial)

    def expect(self, project_id: str, transfer_id: str, limits: Limits | None) -> None:
        self.expected[project_id] = (transfer_id, limits)

    def _marker(self, project_id: str) -> Path:
        return self.folder / f"{project_id}.json"

    async def _receive(self, sock: conat.Socket) -> None:
        staging: Path | None = None
        try:
            formats = ["btrfs", "tar"] if self.projects.subvolume_homes else ["tar"]
            await sock.send(msgspec.msgpack.encode(Welcome(formats=formats)), encoding="raw")
            offer = msgspec.msgpack.decode((await sock.recv(timeout=_OFFER_TIMEOUT)).raw, type=Offer)
            expected = self.expected.get(offer.project_id)
            if (
                sock.subject != move_subject(offer.project_id)
                or expected is None
                or expected[0] != offer.transfer_id
            ):
                raise BadArgument("transfer_id", "this host expects no such transfer")
            if offer.format not in formats:
                raise BadArgument("format", f"this host does not take a {offer.format} transfer")
            del self.expected[offer.project_id]
            staging = self.folder / f"in-{offer.transfer_id}.{offer.format}"
            check = SendStreamCheck() if offer.format == "btrfs" else None
            digest, size = hashlib.sha256(), 0
            with staging.open("wb") as f:
                while size < offer.bytes:
                    block = (await sock.recv(timeout=120.0)).raw
                    size += len(block)
                    if size > offer.bytes:
                        raise BadArgument("archive", f"more than the {offer.bytes} bytes offered")
                    digest.update(block)
                    if check is not None:  # refused as it arrives: nothing of it is ever applied
                        check.feed(block)
                    await asyncio.to_thread(f.write, block)
            if digest.hexdigest() != offer.sha256:
                raise BadArgument("archive", f"sha256 {digest.hexdigest()} is not the {offer.sha256} offered")
            if check is not None:
                check.finish()
            await self._install(offer, staging, expected[1])
            ack = Ack(ok=True, bytes=size, sha256=digest.hexdigest())
        except (conat.ConatError, msgspec.MsgspecError, OSError, tarfile.TarError) as e:
            log.warning("incoming transfer on %s refused: %s", sock.subject, e)
            ack = Ack(ok=False, error=str(e))
        finally:
            if staging is not None:
                staging.unlink(missing_ok=True)
        with contextlib.suppress(conat.ConatError):
            await sock.send(msgspec.msgpack.encode(ack), encoding="raw")
            await sock.aclose(timeout=10.0)

    def _unpack(self, offer: Offer, received: Path, into: Path) -> None:
        """Make ``into`` (beside the homes) from what arrived; blocking. A tar archive is unpacked
        into a subvolume where homes are subvolumes, so a later move from here can send it."""
        if offer.format == "btrfs":
            install_stream(received, into)
            return
        if self.projects.subvolume_homes:
            make_home(into)
        _extract(received, into)

    async def _install(self, offer: Offer, received: Path, limits: Limits | None) -> None:
        """Unpack beside the homes, move into place, then create the project (whose first bootlog
        entry then goes to the bootlog that arrived), and give the files to its uid."""
        projects = self.projects
        home = projects.home(offer.project_id)
        if await projects.load(offer.project_id) is not None or home.exists():
            raise BadArgument("project_id", f"project {offer.project_id} exists on this host already")
        staging = projects.config.projects / f".incoming-{offer.transfer_id}"
        try:
            await asyncio.to_thread(self._unpack, offer, received, staging)
            await forget_streams(self.persist, staging, offer.project_id)
            staging.rename(home)
        except BaseException:
            await asyncio.to_thread(remove_tree, staging)
            raise
        runner = runner_proxy(self.client, projects.host_id, timeout=120.0)
        try:
            await runner.create(offer.project_id, limits)
            record = await projects.load(offer.project_id)
            if record is not None and record.uid is not None:
                await asyncio.to_thread(_chown, home, record.uid)
        except BaseException:
            with contextlib.suppress(conat.ConatError):
                await runner.delete(offer.project_id)
            shutil.rmtree(home, ignore_errors=True)
            raise
        self._marker(offer.project_id).write_text(json.dumps({"transfer_id": offer.transfer_id}))
        what = f"{offer.files} files" if offer.format == "tar" else "a btrfs send stream"
        await projects.bootlog(offer.project_id, "import", f"arrived: {what}, {offer.bytes} bytes, "
                               f"sha256 {offer.sha256[:16]}... verified", 75)  # fmt: skip

    async def abort(self, project_id: str, transfer_id: str) -> None:
        """Drop transfer ``transfer_id`` of ``project_id``: forget it, and delete the project if
        that transfer created it here."""
        expected = self.expected.get(project_id)
        if expected is not None and expected[0] == transfer_id:
            del self.expected[project_id]
        marker = self._marker(project_id)
        try:
            made_by = json.loads(marker.read_text()).get("transfer_id")
        except (OSError, ValueError):
            made_by = None
        if made_by == transfer_id:
            runner = runner_proxy(self.client, self.projects.host_id, timeout=120.0)
            home = self.projects.home(project_id)
            await forget_streams(self.persist, home, project_id)
            with contextlib.suppress(conat.RemoteError):
                await runner.delete(project_id)
            marker.unlink(missing_ok=True)
        for received in self.folder.glob(f"in-{transfer_id}.*"):
            received.unlink(missing_ok=True)
        for partial in self.projects.config.projects.glob(f".incoming-{transfer_id}*"):
            await asyncio.to_thread(remove_tree, partial)

    async def aclose(self) -> None:
        for task in (self._task, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._task, *self._tasks) if t is not None), return_exceptions=True
        )
        if self._server is not None:
            await self._server.aclose()
            self._server = None
        shutil.rmtree(self.folder / "tmp", ignore_errors=True)
