"""Messages as users see them, and the headers conat uses on the wire.

A :class:`Message` holds the raw payload and decodes it lazily, once, with the codec named by its
``Conat-Encoding`` header; when absent, with its subscription's declared encoding (msgpack unless
the subscriber chose another: ``subscribe(..., encoding="raw")``). The protocol's headers (``Conat-*``, the server's
``Status``, the micro error pair: see :mod:`conat._headers`) are reserved; :attr:`Message.headers`
shows only the user's, and users cannot send reserved ones, so nothing of theirs is hidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

from ._codecs import MSGPACK, Codec, get_codec
from ._errors import ErrorCode, PayloadError
from ._headers import ENCODING_HEADER, END_HEADER, error_headers, is_reserved

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Message"]

T = TypeVar("T")

_UNSET: Final[Any] = object()
_JSON_HINT: Final = (
    "; it has no Conat-Encoding header, so it was read as msgpack: a JSON body needs the header"
    " 'Conat-Encoding: json'"
)


@final
class Message:
    """One message received on a subscription, or a reply to a request.

    Attributes:
        subject: the concrete subject it was published to (never a wildcard).
        reply: where :meth:`respond` sends; empty when the sender expects no answer.
        raw: the payload bytes, after chunk reassembly.
    """

    __slots__ = ("_client", "_data", "_default", "_headers", "raw", "reply", "subject")

    def __init__(
        self,
        subject: str,
        reply: str,
        raw: bytes,
        headers: dict[str, str] | None,
        client: Client | None = None,
        default: Codec = MSGPACK,
    ) -> None:
        self.subject = subject
        self.reply = reply
        self.raw = raw
        self._headers = headers
        self._client = client
        self._default = default
        """The codec of a body without ``Conat-Encoding``: the subscription's declared encoding."""
        self._data: Any = _UNSET

    def __repr__(self) -> str:
        return f"<Message subject={self.subject!r} reply={self.reply!r} bytes={len(self.raw)}>"

    @property
    def codec(self) -> Codec:
        """The codec its ``Conat-Encoding`` header names, else its subscription's declared one."""
        h = self._headers
        name = h.get(ENCODING_HEADER) if h else None
        return self._default if name is None else get_codec(name)

    @property
    def encoding(self) -> str:
        return self.codec.name

    @property
    def data(self) -> Any:
        """The decoded payload (decoded on first access; raises :class:`PayloadError`)."""
        if self._data is _UNSET:
            try:
                self._data = self.codec.decode(self.raw)
            except PayloadError as e:
                raise self._hint(e) from None
        return self._data

    def decode(self, type_: type[T]) -> T:
        """Decode the payload into ``type_`` (a msgspec Struct, a builtin, a union…)."""
        try:
            return self.codec.decode_as(self.raw, type_)
        except PayloadError as e:
            raise self._hint(e) from None

    def _hint(self, error: PayloadError) -> PayloadError:
        """Say why a JSON body from a foreign client failed: it was sent without its header."""
        h = self._headers
        if (
            (h and ENCODING_HEADER in h)
            or self._default is not MSGPACK
            or self.raw.lstrip()[:1] not in (b"{", b"[", b'"')
        ):
            return error
        return PayloadError(error.operation, error.codec, error.detail + _JSON_HINT)

    @property
    def headers(self) -> dict[str, str]:
        """The user's headers (conat's own ``Conat-*`` headers are hidden)."""
        h = self._headers
        if not h:
            return {}
        return {k: v for k, v in h.items() if not is_reserved(k)}

    @property
    def raw_headers(self) -> dict[str, str]:
        return dict(self._headers or {})

    def header(self, name: str) -> str | None:
        h = self._headers
        return h.get(name) if h else None

    # -- responding ------------------------------------------------------------------------
    def _require_reply(self) -> Client:
        if not self.reply or self._client is None:
            raise ValueError(f"message on {self.subject!r} has no reply subject to respond to")
        return self._client

    async def respond(
        self, data: Any = None, *, headers: dict[str, str] | None = None, encoding: str | None = None
    ) -> None:
        """Send a reply. Call it several times and then :meth:`end` to stream to ``request_many``."""
        client = self._require_reply()
        await client._core.reply(self.reply, data, headers, encoding)

    def respond_nowait(
        self, data: Any = None, *, headers: dict[str, str] | None = None, encoding: str | None = None
    ) -> None:
        """:meth:`respond` without waiting: the reply is queued for sending at once, for code that
        must not await (a completion callback, a router's fast path on the read loop). Replies
        sent this way go out in the order they were queued; one too large for a single message is
        sent chunked by a task of the client.

        Raises:
            ValueError: the message has no reply subject.
            PayloadError: ``data`` cannot be encoded, or a header name is reserved.
            ClosedError: the client is closed.
        """
        client = self._require_reply()
        client._core.reply_nowait(self.reply, data, headers, encoding)

    def respond_error_nowait(
        self, code: ErrorCode, message: str, *, data: Mapping[str, Any] | None = None
    ) -> None:
        """:meth:`respond_error` without waiting (see :meth:`respond_nowait`)."""
        client = self._require_reply()
        headers, body = error_headers(code, message, data)
        client._core.publish_control_nowait(self.reply, headers, body)

    def respond_busy(self, why: str) -> None:
        """Answer with 429 (busy) without waiting: for a read loop or a router that must never block,
        when the message is dropped because a bounded buffer or mailbox is full. Does nothing if the
        message wants no reply or the client is closing."""
        if self.reply and self._client is not None:
            self._client._core.reply_busy(self.reply, why)

    async def respond_error(
        self, code: ErrorCode, message: str, *, data: Mapping[str, Any] | None = None
    ) -> None:
        """Reply with an error; the requester's ``request()`` raises ``RemoteError(code, message)``.

        ``data`` (JSON-encodable) reaches the requester as ``RemoteError.data``, so a client can
        rebuild a typed error with its fields (not only its text). The reply also carries the NATS
        micro error headers (see :mod:`conat._headers`); a message over 4 KiB is cut, and ``data``
        over 4 KiB is left out, so an error reply always fits in one message.
        """
        client = self._require_reply()
        headers, body = error_headers(code, message, data)
        await client._core.publish_control(self.reply, headers, body)

    async def end(self) -> None:
        """Send the end-of-stream marker that ends the caller's ``request_many`` iteration."""
        client = self._require_reply()
        await client._core.publish_control(self.reply, {END_HEADER: "1"}, b"")

    @property
    def is_end(self) -> bool:
        h = self._headers
        return bool(h and END_HEADER in h)
