"""The first program of every project process: puts itself in the project's sandbox, then execs.

``python -m host._launch '<json spec>'`` runs as the host's user (root on a real host), with the
project's scrubbed environment already in place (the host passes it), and in this order:

1. ``setsid``: a session and process group of its own (so the host can signal the group, and the
   project outlives a host that dies);
2. enters the project's network namespace (``setns``);
3. joins the project's cgroups (writes its pid into each ``cgroup.procs``);
4. sets the rlimits (soft = hard, so the project cannot raise them);
5. ``chdir`` to the project home, drops supplementary groups, gid and uid;
6. ``execvp`` of the project's argv (possibly prefixed by bubblewrap).

Any failure exits with status 121 and one line on stderr (the project's log), which the runner
reports on the bootlog. The spec holds no secret (the token is in a 0600 file named by the env).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
from typing import Any, Final

LAUNCH_FAILED: Final = 121
_CLONE_NEWNET: Final = 0x40000000


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as ns:
        if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")


def launch(spec: dict[str, Any]) -> None:
    os.setsid()
    if spec.get("netns"):
        _setns(spec["netns"])
    pid = str(os.getpid())
    for procs in spec.get("cgroup_procs", []):
        with open(procs, "w") as f:
            f.write(pid)
    for name, value in spec.get("rlimits", {}).items():
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))
    os.chdir(spec["cwd"])
    uid, gid = spec.get("uid"), spec.get("gid")
    if gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
    if uid is not None:
        os.setresuid(uid, uid, uid)
    argv = spec["argv"]
    os.execvp(argv[0], argv)


def main() -> None:
    try:
        launch(json.loads(sys.argv[1]))
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        sys.stderr.write(f"conat launch failed: {e}\n")
        sys.stderr.flush()
        os._exit(LAUNCH_FAILED)


if __name__ == "__main__":
    main()
