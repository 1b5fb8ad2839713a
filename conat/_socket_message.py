"""Messages read from a socket (:class:`SocketMessage`), and the encoding of messages to send."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, TypeVar, final

from ._codecs import MSGPACK, Codec, get_codec
from ._errors import ErrorCode, PayloadError
from ._socket_frames import MessageReceived

if TYPE_CHECKING:
    from ._socket import Socket

__all__ = ["SocketMessage", "encode_payload"]

T = TypeVar("T")
_UNSET: Final[Any] = object()


@final
class SocketMessage:
    """One message read from a socket. ``raw`` is the payload; ``data`` decodes it (once).

    A message sent with :meth:`Socket.request` has :attr:`is_request` set; answer it with
    :meth:`respond` (or :meth:`respond_error`), over the same socket.
    """

    __slots__ = ("_cost", "_data", "_encoding", "_error", "_headers", "_request", "_socket", "raw")

    def __init__(self, socket: Socket, event: MessageReceived) -> None:
        self._socket = socket
        self.raw = event.payload
        self._headers = event.headers
        self._encoding = event.encoding
        self._request = event.request
        self._error = event.error
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

    def decode(self, type_: type[T]) -> T:
        """Decode the payload into ``type_`` (a msgspec Struct, a builtin, a union…)."""
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


def encode_payload(
    data: Any, headers: dict[str, str] | None, encoding: str | None
) -> tuple[bytes, str | None]:
    """Check ``headers`` and encode ``data``: the payload, and the encoding to send (None: msgpack)."""
    if headers:
        for key, value in headers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise PayloadError("encode", "headers", f"header {key!r}: names and values must be str")
    if encoding is None or encoding == "msgpack":
        return MSGPACK.encode(data), None
    codec = get_codec(encoding)
    return codec.encode(data), codec.name
