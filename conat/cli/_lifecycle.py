"""``conat status`` and ``conat down``: which local bus runs, and stopping it; orphans for ``up``/``server``.

The state file (``<data dir>/server.json``, written by ``conat up`` / ``conat server``) names the
nats-server (``pid``) and the conat process that manages it (``manager_pid``). Three cases:

- **running**: the nats-server lives and is still the child of its manager. ``conat down`` sends
  the manager SIGTERM, so that it stops like on Ctrl-C (services first, then the server, then the
  state file goes), and kills it only if it has not stopped within ``--timeout``.
- **orphaned**: the nats-server lives but its manager is gone (a file from before managers were
  recorded, or a platform without parent-death signals). ``conat down`` stops the server itself;
  ``conat up`` and ``conat server`` do the same before starting instead of refusing to start.
- **not running**: no file, or its nats-server is gone (a stale file, e.g. after ``kill -9`` of
  ``conat up``: its nats-server died with it). ``status`` and ``down`` exit 8; ``down`` removes a
  stale file.

A manager pid is trusted only while the nats-server is its child (checked in ``/proc``), so a pid
reused by another program after a crash is never signalled.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import click

from conat import ServerError
from conat._paths import ServerState, clear_state, pid_alive, read_state_file, state_path
from conat._process import parent_pid, stop_pid

from ._app import EXIT_NOT_RUNNING, Options
from ._cluster_cmds import topology, topology_lines
from ._demo import up_extensions
from ._output import Printer

__all__ = ["BusState", "bus_state", "down", "ensure_not_running", "status"]

SERVER_PROGRAM: Final = "nats-server"
MANAGER_PROGRAM: Final = "python"
"""What a manager's ``/proc/<pid>/cmdline`` starts with: ``conat`` is a Python console script."""
ORPHAN_STOP_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class BusState:
    """What the state file says, checked against the processes it names."""

    state: ServerState | None
    server_alive: bool
    manager_pid: int | None
    """The live manager of the live server; ``None`` when there is none (or it cannot be trusted)."""

    @property
    def running(self) -> bool:
        return self.server_alive

    @property
    def orphaned(self) -> bool:
        return self.server_alive and self.manager_pid is None

    @property
    def stale(self) -> bool:
        """A file whose nats-server is gone."""
        return self.state is not None and not self.server_alive


def _live_manager(state: ServerState) -> int | None:
    if state.manager_pid is None:
        return None
    ppid = parent_pid(state.pid)
    if ppid is not None:  # Linux: the server must still be its manager's child
        return state.manager_pid if ppid == state.manager_pid else None
    return state.manager_pid if pid_alive(state.manager_pid, expect=MANAGER_PROGRAM) else None


def bus_state() -> BusState:
    """Read the state file and look at the processes it names (never raises for a bad file)."""
    state = read_state_file()
    if state is None or not pid_alive(state.pid, expect=SERVER_PROGRAM):
        return BusState(state, server_alive=False, manager_pid=None)
    return BusState(state, server_alive=True, manager_pid=_live_manager(state))


def ensure_not_running(out: Printer) -> None:
    """Before ``conat up`` / ``conat server`` start a server: stop an orphan, refuse a live bus.

    Raises:
        ServerError: a bus managed by a live process runs already (exit 6).
    """
    bus = bus_state()
    if not bus.running or bus.state is None:
        return  # nothing, or a stale file: the new server overwrites it
    state = bus.state
    if bus.manager_pid is not None or state.manager_pid is None:
        manager = f", managed by pid {bus.manager_pid}" if bus.manager_pid is not None else ""
        raise ServerError(
            f"a conat bus is already running at {state.url} (nats-server pid {state.pid}{manager}): "
            "use it, or stop it with `conat down`"
        )
    out.note(
        f"stopping the orphaned nats-server pid {state.pid} at {state.url}: "
        f"the conat process that ran it (pid {state.manager_pid}) is gone"
    )
    stop_pid(state.pid, expect=SERVER_PROGRAM, timeout=ORPHAN_STOP_TIMEOUT)
    clear_state(pid=state.pid)


def _data_dir_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="The data dir of the bus (default: $CONAT_DATA_DIR, else ~/.local/share/conat).",
    )(fn)


def _use_data_dir(data_dir: Path | None) -> None:
    if data_dir is not None:
        os.environ["CONAT_DATA_DIR"] = str(data_dir.absolute())


def _uptime(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    shown = [f"{n} {unit}" for n, unit in parts if n] or ["0 s"]
    return " ".join(shown[:2])


def _not_running(out: Printer, bus: BusState, *, removed: bool = False) -> click.exceptions.Exit:
    path = state_path()
    if bus.state is None:
        why = f"no state file at {path}"
    else:
        verb = "removed" if removed else "left"
        why = f"{verb} a stale state file at {path}: nats-server pid {bus.state.pid} is gone"
    out.event(
        f"no conat bus is running ({why})",
        event="not-running",
        running=False,
        stale=bus.stale,
        state_path=str(path),
    )
    return click.exceptions.Exit(EXIT_NOT_RUNNING)


# -- status -------------------------------------------------------------------------------------


@click.command(short_help="Show the local bus that `conat up` / `conat server` runs.")
@_data_dir_option
@click.pass_obj
def status(opts: Options, data_dir: Path | None) -> None:
    """Show the local bus: its URL, the nats-server and the process managing it, since when, and
    where its log is. Exits 8 if no bus is running (a stale state file included).

    With --json: one object with "running" and, when running, url, pid, manager_pid, orphaned,
    started_at, uptime_s, websocket_url, bus (with auth), config_path, log_path, state_path, and
    topology (a node of a cluster or a leaf: its node and cluster names, its routes and its leaf
    links, read from its monitoring endpoint; null otherwise).
    """
    _use_data_dir(data_dir)
    out = Printer(opts.json)
    bus = bus_state()
    if not bus.running or bus.state is None:
        raise _not_running(out, bus)
    state = bus.state
    uptime = time.time() - state.started_at
    if bus.manager_pid is not None:
        manager = f"managed by pid {bus.manager_pid}"
    else:
        manager = "orphaned: the conat process that ran it is gone; `conat down` stops it"
    lines = [
        f"conat bus running at {state.url}",
        f"  nats-server pid {state.pid}, {manager}",
        f"  up {_uptime(uptime)}",
    ]
    if state.bus is not None:
        lines.append(f"  auth:      bus {state.bus}: clients need a token (`conat auth token`)")
    if state.websocket_url is not None:
        lines.append(f"  websocket: {state.websocket_url}")
    topo = topology(state.monitor_url) if state.monitor_url is not None else None
    if topo is not None:
        lines += topology_lines(topo)
    lines += [f"  log:       {state.log_path}", f"  state:     {state_path()}"]
    extensions = {e.name: e.status() for e in up_extensions()}  # the platform's parts, if any run
    lines += [line for found in extensions.values() for line in found]
    out.event(
        "\n".join(lines),
        running=True,
        url=state.url,
        pid=state.pid,
        manager_pid=bus.manager_pid,
        orphaned=bus.orphaned,
        started_at=state.started_at,
        uptime_s=round(uptime, 3),
        websocket_url=state.websocket_url,
        bus=state.bus,
        config_path=state.config_path,
        log_path=state.log_path,
        state_path=str(state_path()),
        extensions={name: found for name, found in extensions.items() if found},
        topology=topo,
    )


# -- down ---------------------------------------------------------------------------------------


@click.command(short_help="Stop the local bus that `conat up` / `conat server` runs.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    help="Seconds the bus gets to stop cleanly before it is killed.",
)
@_data_dir_option
@click.pass_obj
def down(opts: Options, timeout: float, data_dir: Path | None) -> None:
    """Stop the local bus, as Ctrl-C in its terminal would: its services, then its nats-server.

    The `conat up` / `conat server` process gets SIGTERM and --timeout seconds to stop; then it is
    killed (its nats-server dies with it). An orphaned nats-server is stopped directly. Exits 8
    if no bus is running (a stale state file is removed).
    """
    _use_data_dir(data_dir)
    out = Printer(opts.json)
    bus = bus_state()
    if not bus.running or bus.state is None:
        if bus.state is not None:
            clear_state(pid=bus.state.pid)
        raise _not_running(out, bus, removed=bus.stale)
    state = bus.state
    killed = _stop(state, bus.manager_pid, timeout)
    clear_state(pid=state.pid)
    who = f"nats-server pid {state.pid}" + (f", conat pid {bus.manager_pid}" if bus.manager_pid else "")
    how = f" (killed: not stopped after {timeout:g} s)" if killed else ""
    out.event(
        f"stopped the conat bus at {state.url} ({who}){how}",
        event="stopped",
        url=state.url,
        pid=state.pid,
        manager_pid=bus.manager_pid,
        killed=killed,
    )


def _stop(state: ServerState, manager_pid: int | None, timeout: float) -> bool:
    """Stop the manager (if any), then the server if it is still there; whether anything was killed."""
    killed = False
    if manager_pid is not None:
        killed = stop_pid(manager_pid, expect=MANAGER_PROGRAM, timeout=timeout)
    return stop_pid(state.pid, expect=SERVER_PROGRAM, timeout=timeout) or killed
