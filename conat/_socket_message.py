"""Messages read from a socket (:class:`SocketMessage`), the encoding of messages to send, and the
requests a socket waits on (:class:`PendingRequests`): both ends of request/response."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, TypeVar, final, overload

from ._codecs import MSGPACK, Codec, get_codec
from ._error_registry import rebuild_error
from ._errors import ConatError, ErrorCode, PayloadError
from ._socket_frames import MessageReceived

if TYPE_CHECKING:
    from ._socket import Socket

__all__ = ["PendingRequests", "SocketMessage", "encode_payload"]

T = TypeVar("T")
_UNSET: Final[Any] = object()


@final
class SocketMessage:
    """One message read from a socket. ``raw`` is the payload; ``data`` decodes it (once).

    A message sent with :meth:`Socket.request` has :attr:`is_request` set; answer it with
    :meth:`respond` (or :meth:`respond_error`), over the same socket.
    """

    __slots__ = ("_cost", "_data", "_encoding", "_headers", "_request", "_socket", "raw")

    def __init__(self, socket: Socket, event: MessageReceived) -> None:
        self._socket = socket
        self.raw = event.payload
        self._headers = event.headers
        self._encoding = event.encoding
        self._request = event.request
        self._cost = event.cost
        self._data: Any = _UNSET

    def __repr__(self) -> str:
        return f"<SocketMessage subject={self.subject!r} bytes={len(self.raw)} request={self._request}>"

    @property
    def subject(self) -> str:
        """The socket's concrete subject."""
        return self._socket.subject

    @property
    def codec(self) -> Codec:
        return get_codec(self._encoding)

    @property
    def encoding(self) -> str:
        return self._encoding or "msgpack"

    @property
    def data(self) -> Any:
        """The decoded payload (decoded on first access; raises :class:`PayloadError`)."""
        if self._data is _UNSET:
            self._data = self.codec.decode(self.raw)
        return self._data

    @overload
    def decode(self, type_: type[T]) -> T: ...
    @overload
    def decode(self, type_: Any) -> Any: ...
    def decode(self, type_: Any) -> Any:
        """Decode the payload into ``type_``: a msgspec Struct, a builtin, a generic like
        ``list[int]``, or a union like ``Point | None`` (typed ``Any``: a union is not a ``type``).

        Raises:
            PayloadError: the payload does not decode as ``type_``, or ``type_`` is unsupported.
        """
        return self.codec.decode_as(self.raw, type_)

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._headers) if self._headers else {}

    def header(self, name: str) -> str | None:
        h = self._headers
        return h.get(name) if h else None

    @property
    def is_request(self) -> bool:
        return self._request > 0

    def _require_request(self) -> int:
        if not self._request:
            raise ValueError(f"message on socket {self.subject!r} is not a request: nothing to respond to")
        return self._request

    async def respond(
        self, data: Any = None, *, headers: dict[str, str] | None = None, encoding: str | None = None
    ) -> None:
        """Answer this request over the socket (waits for credit like :meth:`Socket.send`)."""
        request = self._require_request()
        payload, enc = encode_payload(data, headers, encoding)
        await self._socket._send(payload, headers, enc, reply_to=request)

    async def respond_error(self, code: ErrorCode, message: str) -> None:
        """Answer with an error: the requester's ``request()`` raises ``RemoteError(code, message)``."""
        request = self._require_request()
        await self._socket._send(message.encode(), None, "raw", reply_to=request, error=code)


@final
class PendingRequests:
    """The requests a socket sent whose responses it still waits for, by request id (1, 2, ...).

    A requester takes an entry with :meth:`open` and awaits its future; the socket settles it with
    :meth:`resolve` (the response) or :meth:`fail_all` (the socket closed); the requester gives it
    back with :meth:`close` whatever happened. A response that finds no entry is dropped.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._futures: dict[int, asyncio.Future[SocketMessage]] = {}
        self._last = 0

    def __len__(self) -> int:
        return len(self._futures)

    def open(self) -> tuple[int, asyncio.Future[SocketMessage]]:
        self._last += 1
        future: asyncio.Future[SocketMessage] = self._loop.create_future()
        self._futures[self._last] = future
        return self._last, future

    def close(self, rid: int, future: asyncio.Future[SocketMessage]) -> None:
        self._futures.pop(rid, None)
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # retrieved: an expiry nobody awaited must not be logged

    def resolve(self, socket: Socket, event: MessageReceived) -> None:
        """A response (``event.reply_to``): a message, or the error it carries (:func:`conat.rebuild_error`)."""
        future = self._futures.pop(event.reply_to, None)
        if future is None or future.done():
            return  # the requester gave up
        if event.error is not None:
            text = event.payload.decode(errors="replace")
            future.set_exception(rebuild_error(event.error, text, subject=socket.subject))
        else:
            future.set_result(SocketMessage(socket, event))

    def fail_all(self, error: ConatError) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)
        self._futures.clear()


def encode_payload(
    data: Any, headers: dict[str, str] | None, encoding: str | None
) -> tuple[bytes, str | None]:
    """Check ``headers`` and encode ``data``: the payload, and the encoding to send (None: msgpack)."""
    if type(data) is bytes and encoding == "raw" and not headers:
        return data, "raw"  # what the raw codec does with bytes, without the lookups
    if headers:
        for key, value in headers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise PayloadError("encode", "headers", f"header {key!r}: names and values must be str")
    if encoding is None or encoding == "msgpack":
        return MSGPACK.encode(data), None
    codec = get_codec(encoding)
    return codec.encode(data), codec.name
