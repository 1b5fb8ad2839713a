"""Where conat keeps its files, and the state file of the local nats-server.

The data directory is, in order of preference:

1. ``$CONAT_DATA_DIR`` (``~`` is expanded);
2. ``$XDG_DATA_HOME/conat`` when ``XDG_DATA_HOME`` is set to an absolute path (the XDG spec says to
   ignore a relative one);
3. ``~/.local/share/conat``.

The **state file** (``<data dir>/server.json``) is written by ``conat up`` / ``conat server`` after their
nats-server is ready, so that ``conat.connect()`` with no URL finds it. It is removed when that server
stops. A state file whose process is gone (the server crashed, or the machine rebooted and the pid was
reused by something else) reads as ``None``: a stale file never points a client at a dead URL.

Every file written here is private (mode 0600) and replaced atomically
(:func:`conat.auth.write_private_file`), so a reader never sees half a file, even if the writer is
killed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import Final

import msgspec

from .auth._files import write_private_file

__all__ = [
    "ServerState",
    "clear_state",
    "data_dir",
    "ensure_data_dir",
    "ensure_private_dir",
    "pid_alive",
    "read_state",
    "read_state_file",
    "state_path",
    "try_lock_file",
    "write_state",
]

logger = logging.getLogger("conat.paths")

STATE_FILE_NAME: Final = "server.json"


class ServerState(msgspec.Struct, frozen=True, kw_only=True):
    """What a running ``conat up`` / ``conat server`` publishes about its nats-server.

    Attributes:
        url: the client URL (``nats://127.0.0.1:<port>``).
        pid: the nats-server process id (not the id of the Python process that manages it).
        started_at: when the server became ready, in seconds since the epoch.
        config_path: the generated nats-server config file.
        log_path: the nats-server log file.
        websocket_url: the websocket URL (``ws://...``) if a websocket listener is configured.
        manager_pid: the process that manages the server (``conat up`` / ``conat server``), which
            ``conat down`` stops; ``None`` in a file written without one. A live server whose manager
            is gone is an orphan: ``conat up`` stops it instead of calling it "already running".
        bus: the bus a server with auth serves (``conat server --auth``): the audience its tokens
            must name (``master`` or ``host-<uuid>``); ``None`` for a server without auth.
        monitor_url: the server's monitoring endpoint (``http://127.0.0.1:<port>``), on for a node
            of a cluster or a leaf: ``conat status`` reads the topology (routes, leaf links) there.
    """

    url: str
    pid: int
    started_at: float
    config_path: str
    log_path: str
    websocket_url: str | None = None
    manager_pid: int | None = None
    bus: str | None = None
    monitor_url: str | None = None


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(ServerState)


def data_dir() -> Path:
    """Return conat's data directory (see the module docstring). Does not create it."""
    explicit = os.environ.get("CONAT_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "conat"
    return Path.home() / ".local" / "share" / "conat"


def ensure_data_dir() -> Path:
    """Return the data directory, creating it and its missing parents (mode 0700) if need be.

    An existing directory keeps its mode: it may be one the user chose and shares on purpose.
    """
    path = data_dir()
    ensure_private_dir(path)
    return path


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` and any missing parents, each mode 0700. Existing directories keep their mode."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # created concurrently: not ours to chmod
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def try_lock_file(path: Path) -> int | None:
    """Take an exclusive ``flock`` on ``path`` (created 0600): the open descriptor, which holds the
    lock until it is closed, or None if another open file holds it.

    How a service says "one of me per directory": the kernel releases the lock when its holder
    exits, kill -9 included, so a crashed process never blocks its successor. (On network
    filesystems ``flock`` may be local to one machine.)"""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def state_path() -> Path:
    """The state file's path: ``<data dir>/server.json``."""
    return data_dir() / STATE_FILE_NAME


def write_state(state: ServerState) -> Path:
    """Publish ``state`` in the state file (atomically, mode 0600). Returns the file's path."""
    path = state_path()
    ensure_private_dir(path.parent)
    write_private_file(path, _encoder.encode(state), what="state file")
    return path


def read_state() -> ServerState | None:
    """Return the published state of a running server, or ``None``.

    ``None`` means: no state file, an unreadable or corrupt one, or one whose nats-server process is
    no longer alive. Never raises for any of those.
    """
    state = read_state_file()
    if state is not None and not pid_alive(state.pid, expect="nats-server"):
        logger.debug("ignoring stale state file %s (pid %d is gone)", state_path(), state.pid)
        return None
    return state


def read_state_file() -> ServerState | None:
    """The state file's content, whether or not its server still runs (``conat status`` tells stale
    files apart); ``None`` if there is no readable, well-formed file. Never raises for those."""
    path = state_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot read state file %s: %s", path, exc)
        return None
    try:
        state = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        logger.warning("ignoring corrupt state file %s: %s", path, exc)
        return None
    return state


def clear_state(*, pid: int | None = None) -> bool:
    """Remove the state file. Returns whether a file was removed.

    Args:
        pid: if given, remove the file only if it describes this server process, so that a server
            stopping late does not erase the state of a newer one.
    """
    path = state_path()
    if pid is not None:
        try:
            current = _decoder.decode(path.read_bytes())
        except (OSError, msgspec.DecodeError):
            current = None
        if current is not None and current.pid != pid:
            return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def pid_alive(pid: int, *, expect: str | None = None) -> bool:
    """Whether process ``pid`` exists (and, where ``/proc`` tells, runs a program whose name contains ``expect``).

    The name check guards against pid reuse after a crash or a reboot: on Linux a pid that now belongs
    to another program counts as dead. Elsewhere only existence is checked.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if expect is None or not sys.platform.startswith("linux"):
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False  # exited in between
    except OSError:
        return True  # cannot tell: trust existence
    argv0 = cmdline.split(b"\0", 1)[0]  # empty for a zombie: it is dead
    return expect in os.path.basename(argv0).decode(errors="replace")
