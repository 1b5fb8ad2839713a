"""Payload codecs: msgpack (default), JSON and raw bytes.

Each codec is one object with the same four operations (``encode``, ``decode``, ``decode_as`` and
its ``name``), so the client picks one by name from a header and never branches on the encoding.
msgspec encoders and decoders are built once; typed decoders are cached per type, because building
a ``msgspec.msgpack.Decoder(T)`` costs far more than using one.

On the wire the encoding travels in the ``Conat-Encoding`` header only when it is not msgpack, so
the common case costs no header bytes.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeVar, cast, final

import msgspec

from ._errors import PayloadError

__all__ = ["CODECS", "DEFAULT_ENCODING", "JSON", "MSGPACK", "RAW", "Codec", "Encoding", "get_codec"]

T = TypeVar("T")
Encoding = Literal["msgpack", "json", "raw"]
DEFAULT_ENCODING: Final[Encoding] = "msgpack"
_TYPED_DECODER_CACHE_MAX: Final = 512


class Codec:
    """Turns Python values into bytes and back. Subclasses differ only in the msgspec module."""

    name: Encoding

    def encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes | memoryview) -> Any:
        raise NotImplementedError

    def decode_as(self, data: bytes | memoryview, type_: type[T]) -> T:
        raise NotImplementedError


class _MsgspecCodec(Codec):
    def __init__(self, module: Any, name: Encoding) -> None:
        self.name = name
        self._module = module
        self._encoder = module.Encoder()
        self._decoder = module.Decoder()
        self._typed: dict[Any, Any] = {}

    def encode(self, value: Any) -> bytes:
        try:
            return cast(bytes, self._encoder.encode(value))
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as e:
            raise PayloadError("encode", self.name, f"{type(value).__name__}: {e}") from None

    def decode(self, data: bytes | memoryview) -> Any:
        try:
            return self._decoder.decode(data)
        except (msgspec.DecodeError, ValueError) as e:
            raise PayloadError("decode", self.name, str(e)) from None

    def decode_as(self, data: bytes | memoryview, type_: type[T]) -> T:
        decoder = self._typed.get(type_)
        if decoder is None:
            try:
                decoder = self._module.Decoder(type_)
            except TypeError as e:
                raise PayloadError("decode", self.name, f"unsupported type {type_!r}: {e}") from None
            if len(self._typed) >= _TYPED_DECODER_CACHE_MAX:
                self._typed.pop(next(iter(self._typed)))
            self._typed[type_] = decoder
        try:
            return cast(T, decoder.decode(data))
        except (msgspec.DecodeError, ValueError) as e:
            raise PayloadError("decode", self.name, f"as {getattr(type_, '__name__', type_)}: {e}") from None


@final
class _RawCodec(Codec):
    """Bytes pass through untouched; ``str`` is sent as UTF-8 for convenience."""

    name: Encoding = "raw"

    def encode(self, value: Any) -> bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, bytearray | memoryview):
            return bytes(value)
        if isinstance(value, str):
            return value.encode()
        raise PayloadError("encode", "raw", f"expected bytes or str, got {type(value).__name__}")

    def decode(self, data: bytes | memoryview) -> bytes:
        return bytes(data)

    def decode_as(self, data: bytes | memoryview, type_: type[T]) -> T:
        if type_ is bytes:
            return cast(T, bytes(data))
        if type_ is str:
            try:
                return cast(T, bytes(data).decode())
            except UnicodeDecodeError as e:
                raise PayloadError("decode", "raw", f"as str: {e}") from None
        raise PayloadError("decode", "raw", f"raw payloads decode only as bytes or str, not {type_!r}")


MSGPACK: Final[Codec] = _MsgspecCodec(msgspec.msgpack, "msgpack")
JSON: Final[Codec] = _MsgspecCodec(msgspec.json, "json")
RAW: Final[Codec] = _RawCodec()
CODECS: Final[dict[str, Codec]] = {"msgpack": MSGPACK, "json": JSON, "raw": RAW}


def get_codec(name: str | None) -> Codec:
    """The codec for an encoding name; ``None`` means the default (msgpack)."""
    if name is None:
        return MSGPACK
    try:
        return CODECS[name]
    except KeyError:
        raise PayloadError("select", name, f"unknown encoding (known: {', '.join(CODECS)})") from None
