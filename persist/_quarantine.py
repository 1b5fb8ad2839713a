"""Corrupt stream files: moved aside, then refused until an operator acts.

Why: a corrupt file used to be moved aside and reported to the one caller that opened it; the next
open found no file, so the stream read as empty and the next write started it again at seq 1, under
the same name, as if nothing had happened. Its consumers' cursors, its seqs and its history were
silently gone. A corrupt stream must stay visibly corrupt until someone decides what it becomes.

**Moving aside** (:func:`quarantine`, called by the engine when a file fails its checks): first a
marker ``<name>.db.quarantined`` is written beside the file (what was found, when, where the file
went), then the file and its ``-wal``/``-shm`` are renamed to ``<name>.db.corrupt-<UTC stamp>`` (never
deleted), then the directory is fsynced, so after a crash at any point the stream is still refused.

**Refusing** (:func:`refuse_if_quarantined`, on every open, one ``lstat``): while the marker is there,
every open of the stream raises :class:`~persist.Corrupt` saying so and naming the way out; reads
too (they must not answer "empty"), and no archive is restored over it behind the operator's back.

**Resetting** (:func:`reset`, an operator's act: ``conat stream reset SCOPE NAME``): whatever is at
the stream's name is moved aside too (never deleted), then either the stream starts again empty (a
new stream id: every changefeed consumer reloads), or, with ``restore``, its archive copy is restored
into place (with a new stream id as well, since seqs after the archive's last one were lost and may
be given again); the marker goes last. Resetting a stream that is not quarantined is refused
(``bad-request``): it is not a way to delete a sound stream. An operator who has put a good file in
place by hand removes the marker instead.

Blocking functions for the executor, on a directory reached without symlinks
(:class:`persist._beneath.Anchor`); they raise ``OSError`` and persist errors, and callers translate
the former at their boundary.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec

from ._beneath import Anchor
from ._errors import BadRequest, Corrupt

__all__ = ["MARKER_SUFFIX", "Quarantine", "quarantine", "read_marker", "refuse_if_quarantined", "reset"]

MARKER_SUFFIX: Final = ".quarantined"
"""Beside ``<name>.db``: the stream is refused while ``<name>.db.quarantined`` exists."""
_MAX_MARKER: Final = 64 * 1024
_SIDES: Final = ("", "-wal", "-shm")
WAY_OUT: Final = (
    "it stays refused until an operator resets it (it starts again empty) or restores its archive:"
    " conat stream reset [--restore] SCOPE NAME, for a stream of the persist service"
    " (StreamStore.reset in-process)"
)
"""What :class:`~persist.Corrupt` says to do about a quarantined stream."""


class Quarantine(msgspec.Struct, frozen=True, kw_only=True):
    """What a marker records: what was wrong, when (UTC), and where the file went."""

    detail: str
    at: str
    moved_to: str


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Quarantine)


def quarantine(anchor: Anchor, detail: str) -> Path:
    """Mark the stream in ``anchor`` as quarantined, then move its file (and ``-wal``/``-shm``) aside.

    Returns:
        the path the file was moved to.
    """
    name = anchor.name
    at = time.gmtime()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", at)
    target = f"{name}.corrupt-{stamp}"
    n = 1
    while any(anchor.lstat(target + side) is not None for side in _SIDES):
        target = f"{name}.corrupt-{stamp}-{n}"
        n += 1
    moved = anchor.file.with_name(target)
    record = Quarantine(detail=detail, at=time.strftime("%Y-%m-%dT%H:%M:%SZ", at), moved_to=str(moved))
    _write_marker(anchor, record)
    for side in _SIDES:
        if anchor.lstat(name + side) is not None:
            anchor.rename(name + side, target + side)
    anchor.fsync()  # the marker and the renames are durable: a power loss brings back neither file
    return moved


def read_marker(anchor: Anchor) -> Quarantine | None:
    """The marker of the stream in ``anchor``, or ``None`` if it is not quarantined.

    A marker that cannot be parsed still quarantines the stream (its text stands as the detail).
    """
    marker = anchor.name + MARKER_SUFFIX
    if anchor.lstat(marker) is None:
        return None
    fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=anchor.dirfd)
    try:
        raw = os.read(fd, _MAX_MARKER)
    finally:
        os.close(fd)
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError:
        text = raw.decode(errors="replace").strip() or "(empty marker)"
        return Quarantine(detail=text, at="?", moved_to="?")


def refuse_if_quarantined(anchor: Anchor) -> None:
    """Raise :class:`~persist.Corrupt` if the stream in ``anchor`` is quarantined (one ``lstat``)."""
    record = read_marker(anchor)
    if record is not None:
        raise Corrupt(
            str(anchor.file),
            f"it was found corrupt at {record.at} ({record.detail}) and moved aside to"
            f" {record.moved_to}; {WAY_OUT}",
        )


def reset(anchor: Anchor, put_back: Callable[[], None] | None = None) -> list[str]:
    """Reset the quarantined stream in ``anchor`` (module docstring): move aside what is at its name,
    then call ``put_back()`` if given (it restores the archive into place; the stream is still
    refused meanwhile), then remove the marker.

    Returns:
        the paths moved aside now (a file left at the name, if any).

    Raises:
        BadRequest: the stream is not quarantined.
    """
    if read_marker(anchor) is None:
        raise BadRequest("reset", f"{anchor.file} is not quarantined (only a corrupt stream can be reset)")
    moved: list[str] = []
    if any(anchor.lstat(anchor.name + side) is not None for side in _SIDES):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = f"{anchor.name}.reset-{stamp}"
        n = 1
        while any(anchor.lstat(target + side) is not None for side in _SIDES):
            target = f"{anchor.name}.reset-{stamp}-{n}"
            n += 1
        for side in _SIDES:
            if anchor.lstat(anchor.name + side) is not None:
                anchor.rename(anchor.name + side, target + side)
        moved.append(str(anchor.file.with_name(target)))
        anchor.fsync()
    if put_back is not None:
        put_back()
    anchor.unlink(anchor.name + MARKER_SUFFIX)
    anchor.fsync()
    return moved


def _write_marker(anchor: Anchor, record: Quarantine) -> None:
    marker = anchor.name + MARKER_SUFFIX
    tmp = f"{marker}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    anchor.create_temp(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=anchor.dirfd)
        try:
            os.write(fd, _encoder.encode(record))
            os.fsync(fd)
        finally:
            os.close(fd)
        anchor.rename(tmp, marker)
    except BaseException:
        with contextlib.suppress(OSError):
            anchor.unlink(tmp)
        raise
