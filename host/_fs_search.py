"""``search``: a regular expression over file contents, with ripgrep where installed, else Python.

Why ripgrep never walks the tree itself: it opens files by path text, so a directory swapped for a
symlink while it walks would let it read outside the project. Instead the file server walks the tree
by directory fds (:func:`host._fs_walk.walk`), opens each candidate itself (regular files only, not
hard-linked, at most ``max_file`` bytes), and hands ripgrep the *open descriptors*, in batches, as
``/proc/self/fd/<n>`` (``pass_fds``): the kernel then names exactly the inode that was checked.

The pattern is ripgrep's (Rust regex syntax) when ripgrep runs, Python's :mod:`re` in the fallback;
``SearchResult.engine`` says which. Output is bounded: at most ``limit`` matches, each line cut to
:data:`MAX_LINE` characters, and the search stops at its deadline (ripgrep is killed). The Python
fallback checks the deadline between files; a pathological pattern can still take long on one file
(Python's ``re`` cannot be interrupted), which is one more reason to install ripgrep.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Final

import msgspec

from conat.beneath import Follow, SpecialFile, open_dir_beneath, open_regular

from ._fs_errors import FsError
from ._fs_ops import Sandbox, translate
from ._fs_types import SearchMatch, SearchResult
from ._fs_walk import Budget, walk

__all__ = ["MAX_LINE", "ripgrep_path", "search"]

MAX_LINE: Final = 500
MAX_FILE: Final = 16 << 20
_BATCH: Final = 256
_MAX_ENTRIES: Final = 500_000


def ripgrep_path() -> str | None:
    """The ``rg`` binary on ``PATH`` (``None``: the Python fallback is used)."""
    return shutil.which("rg")


class _RgText(msgspec.Struct):
    text: str | None = None


class _RgData(msgspec.Struct):
    path: _RgText
    lines: _RgText
    line_number: int | None = None


class _RgEvent(msgspec.Struct):
    type: str
    data: _RgData | None = None


_RG_DECODER: Final = msgspec.json.Decoder(_RgEvent)


def _candidates(
    sandbox: Sandbox, start: int, base: str, globs: list[str] | None, budget: Budget
) -> Iterator[tuple[int, str]]:
    """Open regular files below ``start``: ``(fd, path relative to the root)``; the caller closes."""
    for rel, entry, kind, parent in walk(start, budget, text_names=True):
        if kind != "file":
            continue
        if globs and not any(
            fnmatch.fnmatchcase(entry.name, g) or fnmatch.fnmatchcase(rel, g) for g in globs
        ):
            continue
        try:
            fd, st = open_regular(parent, [entry.name], os.O_RDONLY, follow=Follow.NEVER, follow_last=False)
        except (SpecialFile, OSError):
            continue
        if st.st_size > MAX_FILE or (st.st_nlink > 1 and not sandbox.allow_hardlinks):
            os.close(fd)
            continue
        yield fd, (f"{base}/{rel}" if base else rel)


def search(
    sandbox: Sandbox,
    path: str,
    pattern: str,
    *,
    globs: list[str] | None,
    ignore_case: bool,
    limit: int,
    timeout: float,
    rg: str | None,
) -> SearchResult:
    """Lines matching ``pattern`` in the files below ``path`` (see the module docstring)."""
    if rg is None:
        try:
            regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as e:
            raise FsError("EINVAL", path, f"bad pattern: {e}") from None
    deadline = time.monotonic() + max(0.0, timeout)
    budget = Budget(limit=_MAX_ENTRIES, deadline=deadline)
    base = path.strip("/")
    base = "" if base == "." else base
    with translate(path):
        start = open_dir_beneath(sandbox.fd, path)
    matches: list[SearchMatch] = []
    truncated = False
    batch: list[tuple[int, str]] = []
    try:
        with translate(path):
            for item in _candidates(sandbox, start, base, globs, budget):
                batch.append(item)
                if len(batch) < (_BATCH if rg is not None else 1):
                    continue
                if rg is not None:
                    truncated |= _rg_batch(rg, pattern, ignore_case, batch, matches, limit, deadline)
                else:
                    truncated |= _py_file(regex, batch[0], matches, limit)
                _close_all(batch)
                if truncated or len(matches) >= limit or time.monotonic() > deadline:
                    truncated = True
                    break
            if batch and not truncated:
                if rg is not None:
                    truncated |= _rg_batch(rg, pattern, ignore_case, batch, matches, limit, deadline)
                else:
                    truncated |= _py_file(regex, batch[0], matches, limit)
    finally:
        _close_all(batch)
        os.close(start)
    engine = "ripgrep" if rg is not None else "python"
    return SearchResult(matches[:limit], truncated or budget.truncated, engine, budget.undecodable)


def _close_all(batch: list[tuple[int, str]]) -> None:
    for fd, _ in batch:
        with contextlib.suppress(OSError):
            os.close(fd)
    batch.clear()


def _py_file(regex: re.Pattern[str], item: tuple[int, str], matches: list[SearchMatch], limit: int) -> bool:
    fd, rel = item
    data = os.read(fd, MAX_FILE)
    if b"\0" in data[:8192]:
        return False  # binary
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if regex.search(line):
            matches.append(SearchMatch(rel, number, line[:MAX_LINE]))
            if len(matches) >= limit:
                return True
    return False


def _rg_batch(
    rg: str,
    pattern: str,
    ignore_case: bool,
    batch: list[tuple[int, str]],
    matches: list[SearchMatch],
    limit: int,
    deadline: float,
) -> bool:
    """Run ripgrep over the open files of ``batch``; ``True`` if the limit or the deadline cut it."""
    by_path = {f"/proc/self/fd/{fd}": rel for fd, rel in batch}
    args = [rg, "--json", "--no-config", "--max-count", str(max(1, limit - len(matches)))]
    if ignore_case:
        args.append("--ignore-case")
    args += ["--regexp", pattern, "--", *by_path]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=[fd for fd, _ in batch],
    )
    assert proc.stdout is not None and proc.stderr is not None
    cut = False
    buffer = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    cut = True
                    break
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    _rg_line(line, by_path, matches)
                if len(matches) >= limit:
                    cut = True
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            error = proc.stderr.read(4096).decode("utf-8", "replace")
            proc.stdout.close()
            proc.stderr.close()
    if proc.returncode == 2 and not cut and not matches and "regex" in error.lower():
        raise FsError("EINVAL", "", f"bad pattern: {error.strip().splitlines()[-1] if error else pattern}")
    return cut


def _rg_line(line: bytes, by_path: dict[str, str], matches: list[SearchMatch]) -> None:
    try:
        event = _RG_DECODER.decode(line)
    except msgspec.DecodeError:
        return
    if event.type != "match" or event.data is None or event.data.path.text is None:
        return
    rel = by_path.get(event.data.path.text)
    if rel is None or event.data.line_number is None:
        return
    text = (event.data.lines.text or "").rstrip("\n")
    matches.append(SearchMatch(rel, event.data.line_number, text[:MAX_LINE]))
