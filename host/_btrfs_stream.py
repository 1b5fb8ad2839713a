"""Checking a ``btrfs send`` stream before ``btrfs receive`` applies it (pure: bytes in, verdict out).

A project arriving from another host as a send stream is hostile input: ``btrfs receive`` does
whatever the stream says, as root. Confined to its staging directory (``--chroot``) it cannot write
elsewhere, but some commands reach further than paths do, so :class:`SendStreamCheck` refuses a
stream that holds any of them:

- ``snapshot`` (an incremental stream: it names a parent subvolume on the destination), and a
  ``clone`` whose source is another subvolume than the one being sent: both read data the
  destination already has, which may be another project's. A clone *within* the subvolume (a
  reflinked copy, ``cp --reflink``) is fine, and ``btrfs send`` emits those on its own.
- ``mknod``, ``mkfifo``, ``mksock``: device nodes and special files (the tar import refuses them too).
- ``set_xattr`` of any name outside ``user.``: ``security.capability`` would hand a file
  capabilities, ``trusted.*`` and ``security.*`` are the kernel's. (A tar archive carries none.)
- a stream version other than 1, a command over :data:`MAX_COMMAND` bytes, a truncated stream, or
  anything after the ``end`` command.

Theory of operation: the stream is ``btrfs-stream\\0``, a little-endian ``u32`` version, then
commands, each a header (``u32`` length of its attributes, ``u16`` command, ``u32`` CRC32C) and
that many bytes of attributes, each ``u16`` type, ``u16`` length, value. :meth:`SendStreamCheck.feed`
takes the stream in pieces of any size as it arrives and keeps at most one command's bytes. Only
the attributes of the commands checked here are read (not a ``write``'s data); their CRC and the
other commands' attributes are left to ``btrfs receive``, which checks them.
"""

from __future__ import annotations

import struct
from typing import Final, final

from ._errors import BadArgument

__all__ = ["MAX_COMMAND", "SendStreamCheck"]

MAGIC: Final = b"btrfs-stream\x00"
_HEAD: Final = struct.Struct("<IHI")
_ATTR: Final = struct.Struct("<HH")
MAX_COMMAND: Final = 1 << 20
"""The largest command (its attributes) accepted: a version 1 ``write`` carries at most 64 KiB."""

_SUBVOL, _SNAPSHOT, _MKNOD, _MKFIFO, _MKSOCK, _SET_XATTR, _CLONE, _END = 1, 2, 5, 6, 7, 13, 16, 21
_LAST_V1_COMMAND: Final = 22
_A_UUID, _A_XATTR_NAME, _A_CLONE_UUID = 1, 13, 20
_READ: Final = frozenset({_SUBVOL, _CLONE, _SET_XATTR})
_REFUSED: Final = {
    _SNAPSHOT: "an incremental stream (snapshot of a parent)",
    _MKNOD: "a device node",
    _MKFIFO: "a FIFO",
    _MKSOCK: "a socket file",
}


@final
class SendStreamCheck:
    """Feed a send stream's bytes in order; :meth:`feed` raises on the first refused command and
    :meth:`finish` on a stream that stops short (see the module docstring).

    Raises:
        BadArgument: (field ``stream``) naming what was refused.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._started = False
        self._ended = False
        self._uuid: bytes | None = None
        self.commands = 0
        """Commands checked so far."""

    def feed(self, data: bytes) -> None:
        """Check the next piece of the stream."""
        if self._ended and data:
            raise BadArgument("stream", "bytes after the end command")
        self._buffer += data
        if not self._started:
            if len(self._buffer) < len(MAGIC) + 4:
                if not MAGIC.startswith(bytes(self._buffer[: len(MAGIC)])):
                    raise BadArgument("stream", "not a btrfs send stream")
                return
            if bytes(self._buffer[: len(MAGIC)]) != MAGIC:
                raise BadArgument("stream", "not a btrfs send stream")
            (version,) = struct.unpack_from("<I", self._buffer, len(MAGIC))
            if version != 1:
                raise BadArgument("stream", f"send stream version {version} (only version 1 is accepted)")
            del self._buffer[: len(MAGIC) + 4]
            self._started = True
        buffer, at = self._buffer, 0
        try:
            while len(buffer) - at >= _HEAD.size:
                length, command, _crc = _HEAD.unpack_from(buffer, at)
                if length > MAX_COMMAND:
                    raise BadArgument("stream", f"a command of {length} bytes (at most {MAX_COMMAND})")
                end = at + _HEAD.size + length
                if len(buffer) < end:
                    return
                # only the commands whose attributes are checked are copied out (not a write's data)
                self._command(command, bytes(buffer[at + _HEAD.size : end]) if command in _READ else b"")
                at = end
                if self._ended:
                    if len(buffer) > at:
                        raise BadArgument("stream", "bytes after the end command")
                    return
        finally:
            del buffer[:at]  # once per piece: a piece holds many commands

    def finish(self) -> None:
        """The stream is complete: it ended with its end command."""
        if not self._ended:
            raise BadArgument("stream", "the send stream is truncated (no end command)")

    def _command(self, command: int, attrs: bytes) -> None:
        self.commands += 1
        if command in _REFUSED:
            raise BadArgument("stream", f"refused: {_REFUSED[command]}")
        if self.commands == 1 and command != _SUBVOL:
            raise BadArgument("stream", "the stream must start by making its subvolume")
        if not 0 < command <= _LAST_V1_COMMAND:
            raise BadArgument("stream", f"unknown command {command}")
        if command == _END:
            self._ended = True
            return
        fields = _attributes(attrs)
        if command == _SUBVOL:
            if self._uuid is not None:
                raise BadArgument("stream", "more than one subvolume")
            self._uuid = fields.get(_A_UUID)
            if self._uuid is None:
                raise BadArgument("stream", "a subvolume without its UUID")
        elif command == _CLONE:
            if fields.get(_A_CLONE_UUID) != self._uuid:
                raise BadArgument("stream", "refused: a clone from another subvolume")
        elif command == _SET_XATTR:
            name = fields.get(_A_XATTR_NAME, b"")
            if not name.startswith(b"user."):
                raise BadArgument("stream", f"refused: extended attribute {name[:64]!r}")


def _attributes(data: bytes) -> dict[int, bytes]:
    """A command's attributes by type (the last of a type wins; none of those checked repeats)."""
    fields: dict[int, bytes] = {}
    offset = 0
    while offset < len(data):
        if len(data) - offset < _ATTR.size:
            raise BadArgument("stream", "a truncated attribute")
        kind, length = _ATTR.unpack_from(data, offset)
        offset += _ATTR.size
        if len(data) - offset < length:
            raise BadArgument("stream", "an attribute longer than its command")
        fields[kind] = data[offset : offset + length]
        offset += length
    return fields
