"""Payload compression for storage: zstd for payloads over :data:`COMPRESS_THRESHOLD` when it shrinks them.

Each stored row carries a ``compressed`` flag, so the codec never guesses: :func:`encode` returns the
bytes to store and the flag, :func:`decode` takes both back. A payload is compressed only when it is
larger than :data:`COMPRESS_THRESHOLD` bytes *and* the zstd frame is strictly smaller than the input;
otherwise it is stored as is (incompressible data such as already-compressed media costs nothing
extra on read).

``zstandard`` compressor/decompressor objects are not safe to share between threads, and the engine
calls the codec from its executor threads, so :class:`Encoder`/:class:`Decoder` keep one object per
thread. The module-level :func:`encode`/:func:`decode` use one shared instance of each.

Decoding failures (a flag that says zstd over bytes that are not a zstd frame, a frame that declares
more than :data:`MAX_DECODED_BYTES`) raise :class:`ValueError`; the engine turns them into
:class:`persist.Corrupt` naming the row.
"""

from __future__ import annotations

import threading
from typing import Final, final

import zstandard

__all__ = ["COMPRESS_THRESHOLD", "MAX_DECODED_BYTES", "Decoder", "Encoder", "decode", "encode"]

COMPRESS_THRESHOLD: Final = 1024
"""Payloads of at most this many bytes are never compressed (the frame overhead would not pay)."""

MAX_DECODED_BYTES: Final = 1 << 30
"""A stored frame that claims to decode to more than this is treated as corrupt."""

_LEVEL: Final = 3


@final
class Encoder:
    """Compresses payloads for storage. Thread-safe (one zstd context per thread)."""

    def __init__(self, *, threshold: int = COMPRESS_THRESHOLD, level: int = _LEVEL) -> None:
        self.threshold = threshold
        self.level = level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c: zstandard.ZstdCompressor | None = getattr(self._local, "c", None)
        if c is None:
            c = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
            self._local.c = c
        return c

    def encode(self, payload: bytes) -> tuple[bytes, bool]:
        """Return ``(stored, compressed)``: the bytes to store and whether they are a zstd frame."""
        if len(payload) <= self.threshold:
            return payload, False
        frame = self._compressor().compress(payload)
        if len(frame) < len(payload):
            return frame, True
        return payload, False


@final
class Decoder:
    """Reverses :class:`Encoder`. Thread-safe (one zstd context per thread)."""

    def __init__(self, *, max_size: int = MAX_DECODED_BYTES) -> None:
        self.max_size = max_size
        self._local = threading.local()

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d: zstandard.ZstdDecompressor | None = getattr(self._local, "d", None)
        if d is None:
            d = zstandard.ZstdDecompressor()
            self._local.d = d
        return d

    def decode(self, stored: bytes, compressed: bool) -> bytes:
        """Return the original payload.

        Raises:
            ValueError: ``compressed`` is set but ``stored`` is not a valid zstd frame, or the frame
                decodes to more than ``max_size`` bytes.
        """
        if not compressed:
            return bytes(stored)
        try:
            size = zstandard.frame_content_size(stored)
        except zstandard.ZstdError as e:
            raise ValueError(f"not a zstd frame: {e}") from None
        if size > self.max_size:
            raise ValueError(f"zstd frame declares {size} bytes, over {self.max_size}")
        try:
            if size >= 0:
                return self._decompressor().decompress(stored, max_output_size=max(size, 1))
            return self._decompressor().decompress(stored, max_output_size=self.max_size)
        except zstandard.ZstdError as e:
            raise ValueError(f"bad zstd frame: {e}") from None


_encoder: Final = Encoder()
_decoder: Final = Decoder()


def encode(payload: bytes) -> tuple[bytes, bool]:
    """Return ``(stored, compressed)`` for ``payload`` (see :meth:`Encoder.encode`)."""
    return _encoder.encode(payload)


def decode(stored: bytes, compressed: bool) -> bytes:
    """Return the payload that :func:`encode` turned into ``(stored, compressed)``."""
    return _decoder.decode(stored, compressed)
