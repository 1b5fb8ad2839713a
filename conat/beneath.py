"""Open files and directories beneath a root by what the kernel resolves, never by the text of a path.

Used by the persist engine (stream files beneath a storage root) and the file server (every path of a
project beneath the project's root). Why a module of its own: a check on the *text* of a path
(``realpath`` then ``open``) is a race, and a symlink planted beneath the root would let a service read,
create or write a file anywhere. So the kernel does the checking, and callers keep working on the file
descriptors it gave them (``*at`` calls, ``fstat``), never on a path string resolved again later.

Theory of operation
-------------------
A *root* is a directory fd (:func:`open_root`; the root itself may be a symlink: it is the operator's).
A *path* beneath it is text (``str``), split by :func:`split_path` into literal names: ``/`` separates
names, empty names and ``.`` are dropped, nothing else is interpreted (no URL decoding, no ``~``, no
Unicode normalisation, a backslash is a character). NUL bytes, absolute paths, names over
:data:`NAME_MAX` bytes, paths over :data:`PATH_MAX` bytes or :data:`MAX_DEPTH` names are refused before
any system call.

How symlinks beneath the root are treated is the caller's choice (:class:`Follow`):

- ``Follow.NEVER`` (persist): no symlink anywhere beneath the root is followed, and ``..`` is refused.
  Names are opened one at a time from the previous directory's fd with ``openat2(RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)``, or ``O_NOFOLLOW`` where ``openat2`` is missing; a
  symlink raises :class:`SymlinkRefused` naming where it is.
- ``Follow.BENEATH`` (the file server): symlinks and ``..`` are followed as long as resolution never
  leaves the root. With ``openat2`` the whole path is resolved in one call with ``RESOLVE_BENEATH |
  RESOLVE_NO_MAGICLINKS`` (the kernel refuses absolute symlinks, ``..`` above the root and ``/proc``
  magic links, and retries a ``..`` that raced a rename). Without it, a walk does the same in user
  space: every name is opened ``O_PATH | O_NOFOLLOW`` relative to the fd of the directory before it; a
  symlink found so is read through its own fd (``readlinkat(fd, "")``, so what is read is what was
  checked) and its text spliced into the names still to resolve; ``..`` pops the walk's own stack of
  directory fds (never the kernel's ``..``), and popping the root, or an absolute symlink, is
  :class:`OutsideRoot`. A magic link is never followed by the walk: it only ever reads link text.

Either way the last name may be left unfollowed (``follow_last=False``: ``O_NOFOLLOW``), which is
what ``lstat``, ``unlink``, ``rename`` and ``readlink`` need (see :func:`open_parent`).

File contents: :func:`open_regular` first opens ``O_PATH`` (which never blocks and has no side effect,
not even on a FIFO or a device), checks with ``fstat`` that it is a regular file (else
:class:`SpecialFile`, or ``EISDIR``) and only then opens that same inode for reading or writing,
through ``/proc/self/fd/<fd>``. Where ``/proc`` is missing it opens with ``O_NONBLOCK | O_NOCTTY``,
checks, and clears ``O_NONBLOCK``.

Errors are :class:`OSError` s carrying the *relative* path given (never the host path): the three
refusals below, and what the kernel said (``ENOENT``, ``ENOTDIR``, ``ELOOP``...). Callers translate
them at their one error boundary.

Linux only for ``openat2`` and ``/proc``; elsewhere the ``O_NOFOLLOW`` walk runs.
"""

from ._beneath import (
    MAX_DEPTH,
    MAX_SYMLINKS,
    NAME_MAX,
    PATH_MAX,
    BadName,
    Follow,
    OutsideRoot,
    SpecialFile,
    SymlinkRefused,
    fd_path,
    file_kind,
    open_beneath,
    open_dir_beneath,
    open_parent,
    open_regular,
    open_root,
    openat2_available,
    set_openat2,
    split_path,
)

__all__ = [
    "BadName",
    "Follow",
    "MAX_DEPTH",
    "MAX_SYMLINKS",
    "NAME_MAX",
    "OutsideRoot",
    "PATH_MAX",
    "SpecialFile",
    "SymlinkRefused",
    "fd_path",
    "file_kind",
    "open_beneath",
    "open_dir_beneath",
    "open_parent",
    "open_regular",
    "open_root",
    "openat2_available",
    "set_openat2",
    "split_path",
]
