"""The Python client of a project's file server: ``host.fs(client, project_id)``.

:class:`FsClient` *is* a :class:`~host.FileSystem` (the RPC protocol, typed), plus what RPC cannot
do: streamed reads and writes of any size (:meth:`FsClient.read_stream`, :meth:`FsClient.write_stream`,
:meth:`FsClient.download`, :meth:`FsClient.upload`) and watch sockets (:meth:`FsClient.watch`).

Each client has a random writer token: its writes carry it, and its watches may ask not to be told
about them (``watch(path, echo=False)``), which is how a sync client avoids reacting to its own saves.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import secrets
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, Final, Self, final

from conat import INTERNAL, Client, ConatError, EndOfStream, Socket, rebuild_error
from subjects import fs_project

from ._fs_server import WatchRequest, watch_subject
from ._fs_transfer import read_chunks, write_chunks
from ._fs_types import FileSystem, Stat, WatchEvent, WriteResult

__all__ = ["FsClient", "FsWatch", "fs"]

_RPC: Final = tuple(name for name, _ in inspect.getmembers(FileSystem, inspect.iscoroutinefunction))
_WRITES: Final = frozenset({"write_file", "write_file_delta", "append_file"})
_FILE_CHUNK: Final = 1 << 20


@final
class FsWatch:
    """Events of a watch socket: ``async for event in watch`` (:class:`~host.WatchEvent`).

    The first event is ``ready``. Ends when the server closes the socket; close it with
    :meth:`aclose` (or ``async with``).
    """

    def __init__(self, sock: Socket) -> None:
        self._sock = sock
        self._ready: deque[WatchEvent] = deque()

    def __aiter__(self) -> FsWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        try:
            return await self.next()
        except (EndOfStream, asyncio.CancelledError):
            raise StopAsyncIteration from None

    async def next(self, timeout: float | None = None) -> WatchEvent:
        """The next event, waiting at most ``timeout`` seconds (:class:`conat.Timeout`)."""
        while not self._ready:
            msg = await self._sock.recv(timeout=timeout)
            if msg.header("fs") == "error":
                data = msg.data
                fields = data.get("data")
                raise rebuild_error(
                    data.get("code", INTERNAL),
                    data.get("message", ""),
                    subject=self._sock.subject,
                    data=fields if isinstance(fields, dict) else None,
                )
            self._ready.extend(msg.decode(list[WatchEvent]))
        return self._ready.popleft()

    async def aclose(self) -> None:
        try:
            await self._sock.aclose(timeout=1.0)
        except ConatError:
            self._sock.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class FsClient(FileSystem):
    """A project's file server, over ``client``. Every :class:`~host.FileSystem` method is an RPC
    (``timeout=`` per call is accepted too); errors are :class:`~host.FsError` with the file server's
    codes (each also a :class:`conat.RemoteError`)."""

    def __init__(self, client: Client, project_id: str, *, timeout: float = 30.0) -> None:
        self.client = client
        self.project_id = project_id
        self.timeout = timeout
        self.writer = secrets.token_hex(8)
        """This client's writer token (sent with its writes, for echo suppression)."""
        proxy = client.service(FileSystem, fs_project(project_id), timeout=timeout)
        for name in _RPC:
            method = getattr(proxy, name)
            setattr(self, name, self._with_echo(method) if name in _WRITES else method)

    def _with_echo(self, method: Any) -> Any:
        writer = self.writer

        async def call(*args: Any, **kwargs: Any) -> Any:
            if len(args) < 3 + (1 if method.__name__.endswith("delta") else 0):
                kwargs.setdefault("echo", writer)
            return await method(*args, **kwargs)

        return call

    # ---- streams ----------------------------------------------------------------------------------

    async def read_stream(self, path: str) -> AsyncIterator[bytes]:
        """The file's contents in chunks, any size, with flow control (bounded memory).

        Raises :class:`~host.FsError` ``EIO`` if the contents sent do not add up (size or SHA-256).
        """
        sha = hashlib.sha256()
        size = 0
        async for item in read_chunks(self.client, self.project_id, path, timeout=self.timeout):
            if isinstance(item, bytes):
                sha.update(item)
                size += len(item)
                yield item
            elif isinstance(item, WriteResult) and (item.size, item.sha256) != (size, sha.hexdigest()):
                raise rebuild_error(
                    "EIO",
                    f"the transfer of {path!r} was corrupted",
                    subject=self.project_id,
                    data={"path": path, "detail": "the transfer was corrupted (size or SHA-256 differ)"},
                )

    async def stat_and_stream(self, path: str) -> tuple[Stat, AsyncIterator[bytes]]:
        """The file's :class:`Stat` (as sent) and an iterator of its contents."""
        stream = read_chunks(self.client, self.project_id, path, timeout=self.timeout)
        first = await anext(stream)
        assert isinstance(first, Stat)

        async def rest() -> AsyncIterator[bytes]:
            async for item in stream:
                if isinstance(item, bytes):
                    yield item

        return first, rest()

    async def write_stream(
        self, path: str, chunks: AsyncIterable[bytes] | Iterable[bytes], *, echo: bool = True
    ) -> WriteResult:
        """Replace ``path`` with the chunks, any size; visible only once complete (atomic)."""
        return await write_chunks(
            self.client,
            self.project_id,
            path,
            chunks,
            echo=self.writer if echo else None,
            timeout=self.timeout,
        )

    async def download(self, path: str, dest: str | os.PathLike[str]) -> int:
        """Copy the project's ``path`` to the local file ``dest``; returns the bytes written."""
        written = 0
        out = await asyncio.to_thread(open, dest, "wb")
        try:
            async for chunk in self.read_stream(path):
                await asyncio.to_thread(out.write, chunk)
                written += len(chunk)
        finally:
            await asyncio.to_thread(out.close)
        return written

    async def upload(self, source: str | os.PathLike[str], path: str) -> WriteResult:
        """Copy the local file ``source`` to the project's ``path``."""

        async def chunks() -> AsyncIterator[bytes]:
            f = await asyncio.to_thread(open, source, "rb")
            try:
                while chunk := await asyncio.to_thread(f.read, _FILE_CHUNK):
                    yield chunk
            finally:
                await asyncio.to_thread(f.close)

        return await self.write_stream(path, chunks())

    # ---- watch ------------------------------------------------------------------------------------

    async def watch(self, path: str = "", *, echo: bool = True, window: int | None = None) -> FsWatch:
        """Watch ``path`` (a directory, recursively, or a file). ``echo=False``: skip events of
        this client's own writes. ``window``: bytes of events the server may send ahead of what
        this client has read (the socket's default if ``None``); beyond that and the server's
        per-subscriber queue, events are dropped and an ``overflow`` event says so. Close the
        returned :class:`FsWatch` when done."""
        sock = await self.client.socket_connect(
            watch_subject(self.project_id), timeout=self.timeout, window=window, wait_for_interest=True
        )
        try:
            await sock.send(WatchRequest(path, None if echo else self.writer))
        except BaseException:
            sock.abort()
            raise
        return FsWatch(sock)


def fs(client: Client, project_id: str, *, timeout: float = 30.0) -> FsClient:
    """The file server of ``project_id`` (a uuid), typed as :class:`~host.FileSystem` plus streams
    and watches."""
    # The protocol's methods are instance attributes (RPC proxies) set in __init__; mypy sees the
    # Protocol's stubs as abstract, hence the ignore.
    return FsClient(client, project_id, timeout=timeout)  # type: ignore[abstract]
