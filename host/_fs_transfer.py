"""Files of any size, streamed in chunks over a conat socket on ``fs.project-<p>.io``.

Protocol: the client connects and sends a :class:`TransferRequest`. Control messages carry the
header ``fs`` (``start``, ``end``, ``error``); data messages are raw bytes without it.

- **read**: the server answers ``start`` (the file's :class:`~host._fs_types.Stat`), then the
  contents in chunks of ``chunk`` bytes, then ``end`` (a :class:`~host._fs_types.WriteResult` with the
  size sent and the SHA-256 of what was sent), then closes.
- **write**: the client sends chunks, then ``commit``; the server writes them to an unnamed
  temporary file beside the target, and only on ``commit`` fsyncs it, renames it
  over the target and fsyncs the directory; then answers ``end`` (size, SHA-256). A reader of the
  path sees the old file until then. A stream that ends without ``commit`` (the client failed or
  left), or any failure, discards the temporary file and answers ``error``
  (``{code, message}``, the file server's codes).

Memory: the socket's credit window bounds what is in flight in each direction, and each side
handles at most :data:`BATCH` (1 MiB) at a time, so neither side holds more than a window and a
batch of the file,
whatever its size. The quota is checked as data arrives (a write that would exceed it stops with
``EDQUOT`` at the chunk that crosses it).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Final, Literal

import msgspec

from conat import INTERNAL, Client, ConatError, RemoteError, Socket, SocketMessage, error_reply, rebuild_error
from subjects import service_subject

from ._fs_errors import FsError, from_os_error
from ._fs_ops import AtomicFile, to_stat
from ._fs_project import ProjectFs
from ._fs_shared import FsShared, project_of
from ._fs_types import Stat, WriteResult

__all__ = [
    "IO_PATTERN",
    "WINDOW",
    "TransferRequest",
    "io_subject",
    "read_chunks",
    "serve_transfer",
    "write_chunks",
]

log = logging.getLogger("conat.host.fs.transfer")

IO_PATTERN: Final = "fs.*.io"
KIND: Final = "fs"
WINDOW: Final = 8 << 20
"""Credit window of transfer sockets (bytes in flight per direction)."""
_FIRST_TIMEOUT: Final = 30.0
BATCH: Final = 1 << 20
"""Bytes read or written per trip to a worker thread (a few chunks)."""
_CHUNK: Final = 256 << 10


def io_subject(project_id: str) -> str:
    """``fs.project-<p>.io``: where a project's transfer sockets connect."""
    return service_subject("fs", f"project-{project_id}", "io")


class TransferRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    op: Literal["read", "write"]
    path: str
    echo: str | None = None


class _Failure(msgspec.Struct, frozen=True):
    code: str | int
    message: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    """The error's fields (:func:`conat.error_fields`), so the client rebuilds it typed."""


# ---- the server's side -------------------------------------------------------------------------------


async def serve_transfer(shared: FsShared, sock: Socket) -> None:
    """Answer one transfer socket (see the module docstring); closes it."""
    project: ProjectFs | None = None
    request: TransferRequest | None = None
    try:
        try:
            first = await sock.recv(timeout=_FIRST_TIMEOUT)
            request = first.decode(TransferRequest)
        except (ConatError, msgspec.ValidationError, msgspec.DecodeError) as e:
            raise FsError("EINVAL", "", f"bad transfer request: {e}") from None
        project = await shared.acquire(project_of(sock.subject.split(".")[1]))
        shared.touch(project.project_id)
        if project.background >= shared.config.transfers + shared.config.background:
            raise FsError("EBUSY", request.path, "too many transfers running for this project")
        project.background += 1
        try:
            if request.op == "read":
                await _serve_read(shared, project, sock, request)
            else:
                await _serve_write(shared, project, sock, request)
        finally:
            project.background -= 1
    except FsError as e:
        await _fail(sock, e)
    except OSError as e:  # the boundary: a host path never reaches the caller
        await _fail(sock, from_os_error(e, request.path if request is not None else ""))
    except ConatError as e:
        log.debug("transfer on %s ended: %s", sock.subject, e)
    except Exception as e:
        log.exception("transfer on %s failed", sock.subject)
        await _fail(sock, e)
    finally:
        if project is not None:
            shared.release(project)
        try:
            await sock.aclose()
        except ConatError:
            sock.abort()


async def _fail(sock: Socket, error: Exception) -> None:
    try:
        await sock.send(_Failure(*error_reply(error)), headers={KIND: "error"})
    except ConatError:
        pass


def _read_chunk(fd: int, size: int, offset: int, sha: Any) -> bytes:
    chunk = os.pread(fd, size, offset)
    sha.update(chunk)
    return chunk


def _write_all(file: AtomicFile, parts: list[bytes]) -> None:
    for part in parts:
        file.write(part)


async def _serve_read(shared: FsShared, project: ProjectFs, sock: Socket, request: TransferRequest) -> None:
    sandbox = await shared.sandbox(project)
    fd, st = await shared.run(sandbox.open_read, request.path)
    try:
        await sock.send(to_stat(st), headers={KIND: "start"})
        sha = hashlib.sha256()
        offset = 0
        chunk_size = shared.config.chunk
        while True:  # one trip to a worker thread per BATCH bytes, sent as chunk-sized messages
            block = await shared.run(_read_chunk, fd, max(chunk_size, BATCH), offset, sha)
            if not block:
                break
            offset += len(block)
            view = memoryview(block)
            for start in range(0, len(view), chunk_size):
                await sock.send(view[start : start + chunk_size], encoding="raw")
        await sock.send(WriteResult(offset, sha.hexdigest()), headers={KIND: "end"})
    finally:
        os.close(fd)


async def _serve_write(shared: FsShared, project: ProjectFs, sock: Socket, request: TransferRequest) -> None:
    sandbox = await shared.sandbox(project)
    old = await shared.run(sandbox.file_size, request.path)
    file, parent, _ = await shared.run(sandbox.begin_write, request.path)
    charged = 0
    committed = False
    pending: list[bytes] = []
    buffered = received = 0
    try:
        async for msg in sock:
            kind = msg.header(KIND)
            if kind == "commit":
                committed = True
                break
            if kind is not None:
                raise FsError("EINVAL", request.path, f"unexpected control message {kind!r}")
            data = msg.raw
            received += len(data)
            grow = max(0, received - old) - charged  # charged as it arrives, before it is written
            if grow > 0:
                project.usage.charge(grow, request.path)
                charged += grow
            pending.append(data)
            buffered += len(data)
            if buffered >= BATCH:  # one trip to a worker thread per BATCH bytes
                await shared.run(_write_all, file, pending)
                pending, buffered = [], 0
        if pending:
            await shared.run(_write_all, file, pending)
        if not committed:
            raise FsError(
                "EIO", request.path, "the writer left before the end of the data: nothing was written"
            )
        project.echoes.wrote(request.path.strip("/"), request.echo, shared.clock.now())
        await shared.run(file.commit)
        project.usage.charge(min(0, file.size - old), request.path)
    except BaseException:
        project.usage.credit(charged)
        raise
    finally:
        await shared.run(file.abort)
        os.close(parent)
    await sock.send(WriteResult(file.size, file.sha256), headers={KIND: "end"})


# ---- the client's side -------------------------------------------------------------------------------


def _raise(msg: SocketMessage, subject: str) -> None:
    if msg.header(KIND) == "error":
        failure = msg.decode(_Failure)
        raise rebuild_error(failure.code, failure.message, subject=subject, data=failure.data)


async def read_chunks(
    client: Client, project_id: str, path: str, *, timeout: float = 30.0
) -> AsyncIterator[bytes | Stat | WriteResult]:
    """Stream a file: yields its :class:`Stat` first, then ``bytes`` chunks, then a final
    :class:`WriteResult` (size and SHA-256 of what was sent). Raises :class:`conat.RemoteError`
    with the file server's codes."""
    subject = io_subject(project_id)
    sock = await client.socket_connect(subject, timeout=timeout, window=WINDOW, wait_for_interest=True)
    try:
        await sock.send(TransferRequest("read", path))
        while True:
            msg = await sock.recv(timeout=timeout)
            kind = msg.header(KIND)
            if kind is None:
                yield msg.raw
            elif kind == "start":
                yield msg.decode(Stat)
            elif kind == "end":
                yield msg.decode(WriteResult)
                return
            else:
                _raise(msg, subject)
                raise RemoteError(INTERNAL, f"unexpected transfer message {kind!r}", subject)
    finally:
        try:
            await sock.aclose()
        except ConatError:
            sock.abort()


async def write_chunks(
    client: Client,
    project_id: str,
    path: str,
    chunks: AsyncIterable[bytes] | Iterable[bytes],
    *,
    echo: str | None = None,
    timeout: float = 30.0,
) -> WriteResult:
    """Replace ``path`` with the concatenated ``chunks`` (visible only once all arrived and were
    written). Chunks larger than 256 KiB are split."""
    subject = io_subject(project_id)
    sock = await client.socket_connect(subject, timeout=timeout, window=WINDOW, wait_for_interest=True)
    try:
        try:
            await sock.send(TransferRequest("write", path, echo))
            async for chunk in _iterate(chunks):
                view = memoryview(chunk)
                for start in range(0, len(view), _CHUNK):
                    await sock.send(bytes(view[start : start + _CHUNK]), encoding="raw")
            await sock.send(None, headers={KIND: "commit"})
            await sock.send_eof()
        except ConatError:
            pass  # the server stopped reading: its answer says why
        except BaseException:
            sock.abort()  # the data source failed: the server discards what it got
            raise
        msg = await sock.recv(timeout=timeout)
        _raise(msg, subject)
        return msg.decode(WriteResult)
    finally:
        try:
            await sock.aclose()
        except ConatError:
            sock.abort()


async def _iterate(chunks: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk
