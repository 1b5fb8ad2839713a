"""Processes conat starts and stops: children that die with their parent, and stopping a process by pid.

Theory of operation
-------------------
A child process conat starts (the nats-server of ``conat up``, later the services it runs) must not
outlive the process that manages it: a closed terminal, an OOM kill or ``kill -9`` of ``conat up``
would otherwise leave an orphan holding the port and the state file, and the next ``conat up`` would
find it "already running". Linux offers exactly this guarantee: ``prctl(PR_SET_PDEATHSIG, sig)``
makes the kernel send ``sig`` to a process when its parent goes away, however it goes away.

The setting has to be made *in the child*, between ``fork`` and ``exec``. Python's ``preexec_fn`` does
that, but runs Python code in a forked copy of a multi-threaded process (conat's processes have
threads: SQLite workers, anyio portals), where a lock held by another thread at fork time can
deadlock the child. :func:`die_with_parent` instead prefixes the command with a tiny Python program
(``python -I -S -c ...``: no site, no user paths, about 15 ms) that sets the signal on itself, checks
that its parent did not already die, and then ``exec``\\ s the real command. The signal survives the
``exec``, the pid stays the same, and it works with every way of starting a process (``subprocess``,
asyncio and uvloop subprocesses, ``os.posix_spawn``).

**The parent is a thread.** The kernel sends the signal when the *thread* that forked the child
exits, not the whole process. asyncio and uvloop fork on the event loop's thread, so a child started
by a coroutine lives as long as that loop's thread. Never start such a child from a worker thread
(``anyio.to_thread``, ``loop.run_in_executor``): pool threads end when idle and would take the child
with them. Conversely, a thread that ends within the child's first few milliseconds (before the
launcher has set the signal) leaves it to another thread of the process, which it then follows.

Elsewhere than Linux the command is returned unchanged: there, the state file's pid check is what
detects a manager that died (see ``conat status`` / ``conat down``).

:func:`wait_gone` and :func:`stop_pid` stop a process that is not our child (``conat down`` stopping
a ``conat up`` started in another terminal): they wait on a pidfd where the kernel offers one, so
there is no polling loop on Linux.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ._paths import pid_alive

__all__ = ["LAUNCHER_EXIT", "die_with_parent", "parent_pid", "stop_pid", "wait_gone"]

_PR_SET_PDEATHSIG: Final = 1

LAUNCHER_EXIT: Final = 125
"""The launcher's exit code when its parent had already died before the signal was set."""

_LAUNCHER: Final = f"""\
import ctypes, os, sys
try:
    if ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, int(sys.argv[1]), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
except (OSError, AttributeError) as e:
    print("conat: cannot set the parent-death signal:", e, file=sys.stderr, flush=True)
if os.getppid() != int(sys.argv[2]):
    sys.exit({LAUNCHER_EXIT})
os.execvp(sys.argv[3], sys.argv[3:])
"""
"""argv: sig, expected parent pid, program, args... The parent check closes the race where the
parent died between fork and prctl (the child was re-parented already, no signal will ever come)."""


def die_with_parent(
    argv: Sequence[str | os.PathLike[str]], *, sig: signal.Signals = signal.SIGTERM
) -> list[str]:
    """``argv`` (program first) made to receive ``sig`` when the thread that starts it exits.

    Start the result as usual (``subprocess.Popen``, ``loop.subprocess_exec``...): the pid is that of
    the program itself. ``sig`` defaults to SIGTERM, so the child can stop cleanly (nats-server shuts
    down at once on it; a conat service runs its stop path and its own children follow it).

    Linux only: elsewhere ``argv`` comes back unchanged. Read the module docstring for the thread
    rule: start the child from a thread that lives as long as the child should. The program is
    found as ``subprocess`` finds it (a bare name on ``PATH``, a path relative to the child's cwd).

    Raises:
        ValueError: ``argv`` is empty.
    """
    command = [os.fspath(arg) for arg in argv]
    if not command:
        raise ValueError("argv: empty command")
    if not sys.platform.startswith("linux") or not sys.executable:
        return command
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(int(sig)), str(os.getpid()), *command]


def _pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``; ``None`` when the kernel or platform has none (or the pid is gone)."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:  # ProcessLookupError (gone), ENOSYS (old kernel), EPERM...
        return None
    return fd


def wait_gone(pid: int, timeout: float, *, expect: str | None = None) -> bool:
    """Wait up to ``timeout`` seconds until process ``pid`` is gone. Returns whether it is.

    Blocking (for command-line code, not for an event loop). A zombie counts as gone, and so does a
    pid that now runs a program whose name lacks ``expect`` (see :func:`~conat._paths.pid_alive`).
    """
    deadline = time.monotonic() + timeout
    fd = _pidfd(pid)
    if fd is not None:
        try:
            with select.epoll() as poller:
                poller.register(fd, select.EPOLLIN)
                while pid_alive(pid, expect=expect):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    poller.poll(min(left, 1.0))  # readable once the process has exited
                return True
        finally:
            os.close(fd)
    while pid_alive(pid, expect=expect):  # no pidfd (not Linux): poll
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(pid: int, *, expect: str | None, timeout: float) -> bool:
    """Stop process ``pid``: SIGTERM, up to ``timeout`` s for it to exit, then SIGKILL.

    Returns whether it had to be killed. A process already gone (or whose pid now runs another
    program than ``expect``) is left alone.

    Raises:
        PermissionError: the process belongs to someone else.
    """
    if not pid_alive(pid, expect=expect):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_gone(pid, timeout, expect=expect):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_gone(pid, 5.0, expect=expect)
    return True


def parent_pid(pid: int) -> int | None:
    """The parent of process ``pid`` (Linux, from ``/proc``); ``None`` if gone or unknown.

    ``conat down`` trusts a state file's manager pid only while the nats-server is still its child:
    a pid reused by an unrelated process after a crash is never signalled.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None
