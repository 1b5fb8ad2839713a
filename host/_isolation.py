"""What isolation this host can give a project, and the pieces that do not need the network:
the scrubbed environment, rlimits, the project's uid, the bubblewrap mount view.

:func:`probe` answers once, at host start, which mechanisms work here; the runner applies what is
possible to each project and records in :class:`~host.Isolation` exactly what is missing and why,
so ``status`` can say it. A project always runs; it runs less isolated where the host cannot do more.

=============  ===========================================  ===================================
mechanism      how                                          needs
=============  ===========================================  ===================================
env            an allow-list of the host's variables plus   nothing (always)
               the project's own (``CONAT_*``, ``HOME``)
rlimits        ``NOFILE``, ``FSIZE``, ``CORE=0``; ``NPROC``  nothing (always)
               with its own uid; ``AS`` without a memory
               cgroup
cgroup-*       :mod:`host._cgroups` (memory, cpu, pids)     root and cgroup v1 controllers
uid            a uid of its own from the host's range        root
netns          :mod:`host._netns`                            root (CAP_NET_ADMIN)
mountns        bubblewrap: only the project's home (rw),    ``bwrap`` installed, unprivileged
               the system and Python (ro), its own /tmp      user namespaces
=============  ===========================================  ===================================
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ._cgroups import CONTROLLERS, available_controllers
from ._wire import Isolation, Limits

__all__ = [
    "ENV_ALLOW",
    "Capabilities",
    "ProjectPython",
    "bwrap_argv",
    "project_env",
    "project_python",
    "unreachable_parent",
    "probe",
    "rlimits",
]

ENV_ALLOW: Final = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")
"""The only variables a project inherits from the host's environment."""

DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
_MIB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this host can do (from :func:`probe`); ``missing`` says why for each thing it cannot."""

    root: bool
    own_uid: bool
    controllers: tuple[str, ...]
    netns: bool
    bwrap: str | None
    missing: Mapping[str, str]

    def report(self) -> Isolation:
        applied = ["env", "rlimits"]
        applied += [f"cgroup-{c}" for c in self.controllers]
        if self.own_uid:
            applied.append("uid")
        if self.netns:
            applied.append("netns")
        if self.bwrap:
            applied.append("mountns")
        return Isolation(applied=tuple(applied), missing=dict(self.missing))


def _bwrap_works(bwrap: str) -> str | None:
    """None if bubblewrap can make a sandbox here, else why not."""
    try:
        done = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--unshare-ipc", "--", "/bin/true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap does not run: {e}"
    if done.returncode != 0:
        return f"bubblewrap fails: {done.stderr.decode(errors='replace').strip()[:200]}"
    return None


def probe(
    *,
    want_netns: bool = True,
    want_mountns: bool = True,
    want_cgroups: bool = True,
    reachable: tuple[Path, ...] = (),
) -> Capabilities:
    """Find out which isolation works on this host (run once at host start; blocking, ~10 ms).

    ``reachable``: directories a project's own uid must reach (its home's parent, its token's);
    if one is not searchable by other users, projects cannot have their own uid (nor a mount view).
    """
    missing: dict[str, str] = {}
    root = os.geteuid() == 0
    own_uid = root
    if not root:
        missing["uid"] = "the host does not run as root"
    python = project_python()
    for directory in (*reachable, *(Path(r) for r in python.roots)):
        blocked = unreachable_parent(directory)
        if root and blocked is not None:
            own_uid = False
            missing["uid"] = (
                f"{blocked} is not searchable by other users (chmod o+x), so no project uid can reach {directory}"
            )
            break
    if root and own_uid and not _world_usable(python.executable):
        own_uid = False
        missing["uid"] = f"no Python other users may run (the host's is {python.executable})"
    controllers: tuple[str, ...] = ()
    if want_cgroups and root:
        controllers = tuple(c for c in available_controllers() if c in CONTROLLERS)
    for controller in CONTROLLERS:
        if controller not in controllers:
            missing[f"cgroup-{controller}"] = (
                "disabled in the host config" if not want_cgroups
                else "the host does not run as root" if not root
                else f"no writable cgroup v1 {controller} controller"
            )  # fmt: skip
    netns = False
    if not want_netns:
        missing["netns"] = "disabled in the host config"
    elif not root:
        missing["netns"] = "the host does not run as root (needs CAP_NET_ADMIN)"
    else:
        try:
            import pyroute2  # noqa: F401
        except ImportError:
            missing["netns"] = "pyroute2 is not installed"
        else:
            netns = Path("/proc/self/ns/net").exists()
            if not netns:
                missing["netns"] = "the kernel has no network namespaces"
    bwrap = shutil.which("bwrap")
    if not want_mountns:
        missing["mountns"] = "disabled in the host config"
        bwrap = None
    elif bwrap is None:
        missing["mountns"] = "bubblewrap (bwrap) is not installed"
    elif not own_uid:
        missing["mountns"] = "needs the project's own uid (see uid)"
        bwrap = None
    else:
        why = _bwrap_works(bwrap)
        if why is not None:
            missing["mountns"] = why
            bwrap = None
    return Capabilities(
        root=root, own_uid=own_uid, controllers=controllers, netns=netns, bwrap=bwrap, missing=missing
    )


def project_env(
    host_env: Mapping[str, str],
    *,
    project_id: str,
    home: str,
    url: str,
    credentials: str,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The whole environment of a project process: the allow-listed host variables and the
    project's own. Nothing else of the host's environment (tokens, keys, paths) gets through."""
    env = {k: host_env[k] for k in ENV_ALLOW if k in host_env}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(
        HOME=home,
        USER=f"project-{project_id[:8]}",
        CONAT_PROJECT_ID=project_id,
        CONAT_URL=url,
        CONAT_CREDENTIALS=credentials,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def rlimits(limits: Limits, *, own_uid: bool, memory_cgroup: bool) -> dict[str, int]:
    """The rlimits (``resource.RLIMIT_<name>`` -> value, soft = hard) every project process gets."""
    values = {
        "NOFILE": limits.open_files,
        "FSIZE": limits.file_size_mb * _MIB,
        "CORE": 0,
    }
    if own_uid:  # NPROC counts per uid: only meaningful when the project has its own
        values["NPROC"] = limits.pids
    if not memory_cgroup:
        values["AS"] = limits.memory_mb * _MIB * 4
    return values


def unreachable_parent(path: Path) -> Path | None:
    """The first directory above ``path`` (or itself) that other users cannot search, or None."""
    real = path.resolve()
    for directory in (*reversed(real.parents), real):
        try:
            if not directory.stat().st_mode & 0o001:
                return directory
        except OSError:
            return directory
    return None


def _world_usable(path: str) -> bool:
    """Whether any user may reach and run ``path`` (every directory above it searchable by others)."""
    real = Path(path).resolve()
    for parent in real.parents:
        try:
            if not parent.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return os.access(real, os.X_OK) and bool(real.stat().st_mode & 0o001)


@dataclass(frozen=True, slots=True)
class ProjectPython:
    """How a project process runs Python: the interpreter, extra environment, and the directories
    it must see read-only (bubblewrap binds them)."""

    executable: str
    env: Mapping[str, str]
    roots: tuple[str, ...]


def project_python() -> ProjectPython:
    """The host's own Python if other users can run it, else the system's interpreter of the same
    version with the host's packages on ``PYTHONPATH`` (a host whose Python lives in a private
    directory, like root's pyenv, cannot hand that one to a project uid)."""
    paths = sysconfig.get_paths()
    source = str(Path(__file__).resolve().parent.parent)  # this checkout, or site-packages
    packages = tuple(dict.fromkeys((paths["purelib"], paths["platlib"], source)))
    if _world_usable(sys.executable):
        real = Path(sys.executable).resolve()
        roots = {sys.prefix, sys.base_prefix, str(real.parent.parent), *packages}
        return ProjectPython(sys.executable, {}, tuple(sorted(r for r in roots if os.path.isdir(r))))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    return ProjectPython(system, {"PYTHONPATH": ":".join(packages)}, packages)


def bwrap_argv(bwrap: str, home: str, *, extra_ro: tuple[str, ...] = ()) -> list[str]:
    """The bubblewrap prefix that shows a project only its home (read-write), the system and
    Python read-only (plus ``extra_ro``, e.g. the directory of its token file), and a private
    ``/tmp``, ``/proc`` and ``/dev``. Run it as the project's uid."""
    # mounts apply in order: the private /tmp first, so binds that live under /tmp stay visible
    argv = [bwrap, "--unshare-ipc", "--unshare-uts", "--unshare-pid", "--hostname", "project"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for system in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc"):
        if os.path.exists(system):
            argv += ["--ro-bind", system, system]
    for root in (*project_python().roots, *extra_ro):
        argv += ["--ro-bind", root, root]
    argv += ["--bind", home, home, "--chdir", home, "--"]
    return argv
