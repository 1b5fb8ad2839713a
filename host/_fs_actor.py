"""The file server's actor: one keyed actor type on ``fs.*``, one activation per project.

Theory of operation
-------------------
**Order.** A project's calls arrive in its mailbox in arrival order (the actor contract). Calls
that change anything run there one at a time, so mutations of one project never interleave, and
a ``read_file`` with a lock window has exactly one winner. Each call's file work runs on the
server's worker threads; the event loop only routes. Read-only calls run *beside* the mailbox,
concurrently: the quick ones (``read_file``, ``stat``, ``readdir``...; up to :data:`MAX_READS` at
once per project, beyond that they wait their turn in the mailbox) and the long ones (``search``,
``find``, ``du``, recursive ``readdir``; up to ``background`` at once, one more gets 429), each
long one bounded in output and time, so a slow search never holds up a save. A read therefore
sees every write whose reply its caller has received (not necessarily one still in the mailbox).

**Errors** are :class:`~host._fs_errors.FsError` with errno-style codes; the reply carries the
code, a message naming the relative path, and ``data={"path": ...}``. Bad requests (unknown
method 404, wrong arguments 400) come from the typed-service dispatcher. A request for a project
without a directory on this host gets ``ENOPROJECT``; for a key that is not ``project-<uuid>``,
``EINVAL``. Nothing a caller sends can crash the activation.

**Rate.** Each project has a token bucket (``rate`` requests per second, as a burst, on the
server's clock); a request beyond it gets 429 at once. The caller's identity is not known to the actor (the subject, which the
broker binds to the caller's grant, names only the project), so the limit is per project.

**Audit.** With an audit log configured, every mutating call is recorded after it finished (method,
paths, outcome, the claimed principal of its reply inbox).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
from pathlib import Path
from typing import Any, Final

from actors import NO_REPLY, Actor
from conat import (
    BUSY,
    INTERNAL,
    ConatError,
    Dispatcher,
    Message,
    PayloadError,
    RemoteError,
    RpcRequest,
    TokenBucket,
    error_reply,
    respond_error,
)
from conat.beneath import open_root, split_path

from ._fs_audit import claimed_principal
from ._fs_backend import check_snapshot_name, default_snapshot_name, list_snapshots
from ._fs_errors import ETAG_MISMATCH, PATCH_FAILED, PATCH_TOO_LARGE, FsError, from_os_error
from ._fs_ops import Sandbox
from ._fs_patch import PatchFailed, apply_patch
from ._fs_project import ProjectFs
from ._fs_search import search as search_tree
from ._fs_shared import FsShared, project_of
from ._fs_types import (
    DEFAULT_LIMIT,
    CopyResult,
    DirListing,
    DuResult,
    FindResult,
    FindType,
    Listing,
    QuotaInfo,
    Reflink,
    SearchResult,
    Snapshot,
    Stat,
    WriteResult,
)
from ._fs_walk import Budget, copy_tree, du, find, listing, readdir, usage

__all__ = ["FileServerActor"]

log = logging.getLogger("conat.host.fs")

BESIDE: Final = frozenset({"search", "find", "du"})
"""Long calls that run beside the mailbox (``readdir`` too when recursive)."""
READS: Final = frozenset(
    {
        "read_file",
        "exists",
        "stat",
        "lstat",
        "readlink",
        "realpath",
        "readdir",
        "listing",
        "quota",
        "list_snapshots",
    }
)
"""Quick read-only calls that run beside the mailbox (``read_file`` only without a lock window)."""
MAX_READS: Final = 64
MUTATING: Final = frozenset(
    {
        "write_file",
        "write_file_delta",
        "append_file",
        "mkdir",
        "rm",
        "rmdir",
        "unlink",
        "rename",
        "move",
        "copy_file",
        "cp",
        "symlink",
        "chmod",
        "utimes",
        "truncate",
        "create_snapshot",
        "restore_snapshot",
        "delete_snapshot",
    }
)
_TEXT: Final = ("utf-8", "utf8")


def _bytes(data: object, path: str) -> bytes:
    """``data`` as sent (``bytes``, or ``str`` stored as UTF-8); anything else is ``EINVAL``."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise FsError("EINVAL", path, f"data must be bytes or str, not {type(data).__name__}")


_PATH_PARAMS: Final = ("path", "paths", "src", "dst", "name")


def _paths(request: RpcRequest) -> list[str]:
    """The paths (and snapshot names) a request names, for the audit log: never the data."""
    try:
        fn = getattr(FileServerActor, request.name)
        bound = inspect.signature(fn).bind_partial(None, *request.args, **request.kwargs).arguments
    except (AttributeError, TypeError):
        return []
    out: list[str] = []
    for param in _PATH_PARAMS:
        value = bound.get(param)
        if isinstance(value, str):
            out.append(value[:512])
        elif isinstance(value, list):
            out.extend(v[:512] for v in value[:8] if isinstance(v, str))
    return out[:8]


class FileServerActor(Actor, subject="fs.*", name="fs", idle=300.0, max_buffer=1000):
    """``fs.project-<p>``: the file server of one project. Built by :class:`~host.FileServer`."""

    def __init__(self, shared: FsShared) -> None:
        self._shared = shared
        self._project: ProjectFs | None = None
        self._key_error: FsError | None = None
        self._limiter = TokenBucket(shared.config.rate)
        self._dispatcher = _DISPATCHER

    async def on_activate(self) -> None:
        try:
            project_id = project_of(self.key)
        except FsError as e:
            self._key_error = e
            return
        self._project = await self._shared.acquire(project_id)

    async def on_deactivate(self) -> None:
        project, self._project = self._project, None
        if project is not None:
            self._shared.release(project)

    # ---- dispatch --------------------------------------------------------------------------------

    async def receive(self, msg: Message) -> Any:
        try:
            request = self._dispatcher.decode(msg)
        except RemoteError as e:
            await respond_error(msg, *error_reply(e))
            return NO_REPLY
        if not self._limiter.try_take(self._shared.clock.now()):
            await respond_error(msg, BUSY, f"{self.key}: over {self._shared.config.rate:g} requests/s")
            return NO_REPLY
        project = self._project
        if project is not None:
            self._shared.touch(project.project_id)
            if request.name in BESIDE or (request.name == "readdir" and _recursive(request)):
                if project.background >= self._shared.config.background:
                    await respond_error(msg, BUSY, f"{self.key}: too many long calls running")
                    return NO_REPLY
                project.background += 1
                self._shared.spawn(self._beside(project, msg, request, long=True))
                return NO_REPLY
            if request.name in READS and project.reads < MAX_READS and not _locking(request):
                project.reads += 1
                self._shared.spawn(self._beside(project, msg, request, long=False))
                return NO_REPLY
        await self._answer(msg, request)
        return NO_REPLY

    async def _beside(self, project: ProjectFs, msg: Message, request: RpcRequest, *, long: bool) -> None:
        project.refs += 1
        try:
            await self._answer(msg, request)
        finally:
            if long:
                project.background -= 1
            else:
                project.reads -= 1
            self._shared.release(project)

    async def _answer(self, msg: Message, request: RpcRequest) -> None:
        outcome: str = "ok"
        try:
            result = await self._dispatcher.call(self, request)
        except asyncio.CancelledError:
            raise
        except ConatError as e:  # FsError among them: its code and fields (path, detail) go back
            outcome = str(e.code)
            await respond_error(msg, *error_reply(e))
        except OSError as e:  # the boundary: never a host path in a reply
            error = from_os_error(e, "")
            outcome = str(error.code)
            await respond_error(msg, *error_reply(error))
        except Exception as e:
            outcome = str(INTERNAL)
            log.exception("fs %s %s failed", self.key, request.name)
            await respond_error(msg, *error_reply(e))
        else:
            if msg.reply:
                try:
                    await msg.respond(result)
                except PayloadError as e:
                    await respond_error(msg, INTERNAL, f"cannot encode the result: {e.detail}")
                except ConatError as e:
                    log.debug("could not answer %s: %s", msg.subject, e)
        audit = self._shared.audit
        if audit is not None and request.name in MUTATING:
            audit.record(self.key, request.name, _paths(request), outcome, claimed_principal(msg.reply))

    async def _sandbox(self) -> tuple[ProjectFs, Sandbox]:
        if self._key_error is not None:
            raise self._key_error
        project = self._project
        assert project is not None
        return project, await self._shared.sandbox(project)

    def _echo(self, project: ProjectFs, path: str, echo: str | None) -> None:
        project.echoes.wrote(
            "/".join(p for p in path.split("/") if p not in ("", ".")), echo, self.clock.now()
        )

    def _budget(self, limit: int) -> Budget:
        config = self._shared.config
        return Budget.of(min(max(0, limit), config.max_entries), config.time_cap)

    # ---- contents --------------------------------------------------------------------------------

    async def read_file(self, path: str, encoding: str | None = None, lock: float | None = None) -> Any:
        project, sandbox = await self._sandbox()
        if encoding is not None and encoding.lower() not in _TEXT:
            raise FsError("EINVAL", path, f"unsupported encoding {encoding!r} (utf-8 or none)")
        if lock is not None:
            project.locks.take(path, lock, self.clock.now())
        data = await self._shared.run(sandbox.read_file, path)
        if encoding is None:
            return data
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise FsError("EINVAL", path, "the file is not UTF-8 text") from None

    async def write_file(self, path: str, data: Any, echo: str | None = None) -> WriteResult:
        project, sandbox = await self._sandbox()
        self._echo(project, path, echo)  # before the write: its event may come before we resume
        return await self._shared.run(_write, sandbox, project, path, _bytes(data, path))

    async def write_file_delta(
        self, path: str, patch: str, base_sha256: str, echo: str | None = None
    ) -> WriteResult:
        project, sandbox = await self._sandbox()
        if len(patch) > self._shared.config.max_patch:
            raise FsError(
                PATCH_TOO_LARGE, path, f"the patch is over {self._shared.config.max_patch} characters"
            )
        self._echo(project, path, echo)
        return await self._shared.run(_write_delta, sandbox, project, path, patch, base_sha256)

    async def append_file(self, path: str, data: Any, echo: str | None = None) -> WriteResult:
        project, sandbox = await self._sandbox()
        raw = _bytes(data, path)
        project.usage.charge(len(raw), path)
        self._echo(project, path, echo)
        try:
            return await self._shared.run(sandbox.append_file, path, raw)
        except BaseException:
            project.usage.credit(len(raw))
            raise

    async def truncate(self, path: str, size: int = 0) -> None:
        project, sandbox = await self._sandbox()
        old = await self._shared.run(sandbox.file_size, path)
        project.usage.charge(size - old, path)
        try:
            await self._shared.run(sandbox.truncate, path, size)
        except BaseException:
            project.usage.credit(size - old)
            raise

    # ---- metadata --------------------------------------------------------------------------------

    async def exists(self, path: str) -> bool:
        _, sandbox = await self._sandbox()
        return await self._shared.run(sandbox.exists, path)

    async def stat(self, path: str) -> Stat:
        _, sandbox = await self._sandbox()
        return await self._shared.run(sandbox.stat, path)

    async def lstat(self, path: str) -> Stat:
        _, sandbox = await self._sandbox()
        return await self._shared.run(sandbox.lstat, path)

    async def readlink(self, path: str) -> str:
        _, sandbox = await self._sandbox()
        return await self._shared.run(sandbox.readlink, path)

    async def realpath(self, path: str) -> str:
        _, sandbox = await self._sandbox()
        return await self._shared.run(sandbox.realpath, path)

    async def chmod(self, path: str, mode: int) -> None:
        _, sandbox = await self._sandbox()
        await self._shared.run(sandbox.chmod, path, mode)

    async def utimes(self, path: str, atime: float, mtime: float) -> None:
        _, sandbox = await self._sandbox()
        await self._shared.run(sandbox.utimes, path, atime, mtime)

    # ---- directories and names ---------------------------------------------------------------------

    async def readdir(
        self, path: str = "", recursive: bool = False, limit: int = DEFAULT_LIMIT
    ) -> DirListing:
        _, sandbox = await self._sandbox()
        return await self._shared.run(readdir, sandbox, path, recursive, self._budget(limit))

    async def listing(self, path: str = "", limit: int = DEFAULT_LIMIT) -> Listing:
        _, sandbox = await self._sandbox()
        return await self._shared.run(listing, sandbox, path, self._budget(limit))

    async def mkdir(self, path: str, parents: bool = False) -> None:
        _, sandbox = await self._sandbox()
        await self._shared.run(sandbox.mkdir, path, parents)

    async def rm(self, paths: str | list[str], recursive: bool = False, force: bool = False) -> None:
        project, sandbox = await self._sandbox()
        for path in [paths] if isinstance(paths, str) else paths:
            await self._shared.run(sandbox.rm, path, recursive, force)
        self._shared.rescan(project)

    async def rmdir(self, path: str) -> None:
        _, sandbox = await self._sandbox()
        await self._shared.run(sandbox.rmdir, path)

    async def unlink(self, path: str) -> None:
        project, sandbox = await self._sandbox()
        project.usage.credit(await self._shared.run(sandbox.unlink, path))

    async def rename(self, src: str, dst: str) -> None:
        _, sandbox = await self._sandbox()
        await self._shared.run(sandbox.rename, src, dst)

    async def move(self, src: str, dst: str, overwrite: bool = False) -> None:
        _, sandbox = await self._sandbox()
        await self._shared.run(_move, sandbox, src, dst, overwrite)

    async def copy_file(self, src: str, dst: str) -> None:
        project, sandbox = await self._sandbox()
        await self._copy(project, sandbox, src, dst, "auto", directories=False)

    async def cp(self, src: str, dst: str, recursive: bool = False, reflink: Reflink = "auto") -> CopyResult:
        project, sandbox = await self._sandbox()
        if reflink not in ("auto", "always", "never"):
            raise FsError("EINVAL", src, f"reflink must be auto, always or never, not {reflink!r}")
        return await self._copy(project, sandbox, src, dst, reflink, directories=recursive)

    async def _copy(
        self, project: ProjectFs, sandbox: Sandbox, src: str, dst: str, reflink: Reflink, directories: bool
    ) -> CopyResult:
        if not directories and (await self._shared.run(sandbox.stat, src)).type == "dir":
            raise FsError("EISDIR", src, "a directory: copy it with cp(recursive=True)")
        charge = _Charge(project, dst)
        try:
            return await self._shared.run(
                lambda: copy_tree(sandbox, sandbox.fd, src, sandbox.fd, dst, reflink=reflink, charge=charge)
            )
        finally:
            if project.usage.limit is not None:
                self._shared.rescan(project)

    async def symlink(self, target: str, path: str) -> None:
        _, sandbox = await self._sandbox()
        await self._shared.run(sandbox.symlink, target, path)

    # ---- long calls (beside the mailbox) -----------------------------------------------------------

    async def find(
        self,
        path: str = "",
        name: list[str] | None = None,
        type: FindType | None = None,
        max_depth: int | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> FindResult:
        _, sandbox = await self._sandbox()
        budget = self._budget(self._shared.config.max_entries)
        cap = min(max(0, limit), self._shared.config.max_entries)
        return await self._shared.run(find, sandbox, path, name, type, max_depth, budget, cap)

    async def search(
        self,
        pattern: str,
        path: str = "",
        glob: list[str] | None = None,
        ignore_case: bool = False,
        limit: int = 1000,
        timeout: float = 10.0,
    ) -> SearchResult:
        _, sandbox = await self._sandbox()
        config = self._shared.config
        return await self._shared.run(
            lambda: search_tree(
                sandbox,
                path,
                pattern,
                globs=glob,
                ignore_case=ignore_case,
                limit=min(max(1, limit), config.max_entries),
                timeout=min(max(0.0, timeout), config.time_cap),
                rg=self._shared.rg,
            )
        )

    async def du(self, path: str = "") -> DuResult:
        _, sandbox = await self._sandbox()
        return await self._shared.run(du, sandbox, path, self._budget(10 * self._shared.config.max_entries))

    # ---- watch, quota, snapshots ---------------------------------------------------------------------

    async def sync_fs_watch(self, path: str, active: bool = True) -> None:
        project, _ = await self._sandbox()
        await self._shared.hub.heartbeat(project, path, active)

    async def quota(self) -> QuotaInfo:
        project, sandbox = await self._sandbox()
        root = self._shared.config.project_root(project.project_id)
        used = await self._shared.run(self._shared.backend.usage, root)
        if used is None:
            if project.usage.used is None:
                await self._shared.run(lambda: project.usage.set(_count(sandbox)))
            used = project.usage.used or 0
        return QuotaInfo(used=used, limit=self._shared.quota_of(project.project_id))

    async def create_snapshot(self, name: str | None = None) -> Snapshot:
        project, sandbox = await self._sandbox()
        name = check_snapshot_name(name) if name is not None else default_snapshot_name()
        where = self._shared.config.snapshot_root(project.project_id)
        return await self._shared.run(self._shared.backend.create_snapshot, sandbox, where, name)

    async def list_snapshots(self) -> list[Snapshot]:
        project, _ = await self._sandbox()
        where = self._shared.config.snapshot_root(project.project_id)
        return await self._shared.run(list_snapshots, where)

    async def restore_snapshot(self, name: str, path: str | None = None) -> None:
        project, sandbox = await self._sandbox()
        check_snapshot_name(name)
        where = self._shared.config.snapshot_root(project.project_id) / name
        await self._shared.run(_restore, sandbox, where, name, path)
        self._shared.rescan(project)

    async def delete_snapshot(self, name: str) -> None:
        project, _ = await self._sandbox()
        where = self._shared.config.snapshot_root(project.project_id)
        await self._shared.run(self._shared.backend.delete_snapshot, where, name)


_DISPATCHER: Final = Dispatcher(FileServerActor)


def _locking(request: RpcRequest) -> bool:
    """A ``read_file`` with a lock window (it must take its turn: one winner per window)."""
    if request.name != "read_file":
        return False
    if "lock" in request.kwargs:
        return request.kwargs["lock"] is not None
    return len(request.args) > 2 and request.args[2] is not None


def _recursive(request: RpcRequest) -> bool:
    if "recursive" in request.kwargs:
        return bool(request.kwargs["recursive"])
    return len(request.args) > 1 and bool(request.args[1])


class _Charge:
    """Charges copied bytes to the project's quota (called from a worker thread)."""

    def __init__(self, project: ProjectFs, path: str) -> None:
        self._project = project
        self._path = path

    def __call__(self, size: int) -> None:
        self._project.usage.charge(size, self._path)


def _count(sandbox: Sandbox) -> int:
    return usage(sandbox.fd, Budget.of(5_000_000, 60.0))


# ---- blocking bodies (worker threads) --------------------------------------------------------------


def _write(sandbox: Sandbox, project: ProjectFs, path: str, data: bytes) -> WriteResult:
    delta = len(data) - sandbox.file_size(path)
    project.usage.charge(delta, path)
    try:
        return sandbox.write_file(path, data)
    except BaseException:
        project.usage.credit(delta)
        raise


def _write_delta(sandbox: Sandbox, project: ProjectFs, path: str, patch: str, base: str) -> WriteResult:
    data = sandbox.read_file(path)
    if hashlib.sha256(data).hexdigest() != base.lower():
        raise FsError(ETAG_MISMATCH, path)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise FsError(PATCH_FAILED, path, "the file is not UTF-8 text") from None
    try:
        new = apply_patch(text, patch)
    except PatchFailed as e:
        raise FsError(PATCH_FAILED, path, str(e)) from None
    return _write(sandbox, project, path, new.encode())


def _move(sandbox: Sandbox, src: str, dst: str, overwrite: bool) -> None:
    if overwrite and sandbox.exists(dst) and sandbox.lstat(dst).type == "dir":
        if sandbox.lstat(src).type != "dir":
            raise FsError("EISDIR", dst, "cannot replace a directory with a file")
        sandbox.rm(dst, recursive=True, force=True)
    sandbox.rename(src, dst, overwrite=overwrite, make_parents=True)


def _restore(sandbox: Sandbox, snapshot: Path, name: str, path: str | None) -> None:
    """Copy ``path`` (or everything) back from the snapshot directory over the project's tree."""
    try:
        fd = open_root(snapshot)
    except FileNotFoundError:
        raise FsError("ENOENT", "", f"no snapshot {name!r}") from None
    try:
        names = split_path(path) if path is not None else []
        if not names:
            for entry in list(os.scandir(sandbox.fd)):
                sandbox.rm(entry.name, recursive=True, force=True)
            copy_tree(sandbox, fd, "", sandbox.fd, "", reflink="auto", charge=_free)
            return
        source = Sandbox(fd, allow_hardlinks=True).lstat(path or "")
        sandbox.rm(path or "", recursive=True, force=True)
        if len(names) > 1:
            sandbox.mkdir("/".join(names[:-1]), parents=True)
        if source.type == "dir":
            sandbox.mkdir(path or "", parents=True)
        copy_tree(sandbox, fd, path or "", sandbox.fd, path or "", reflink="auto", charge=_free)
    finally:
        os.close(fd)


def _free(_: int) -> None:
    """Restores are not refused by the quota (the usage is counted again afterwards)."""
