"""``conat master serve``, ``conat projects ...``, ``conat hosts ...``, ``conat bootlog follow``.

Registered through the ``conat.commands`` entry point group, so conat never imports master.

The API commands act as the account of an API key file (``--api-key-file``, default
``$CONAT_API_KEY_FILE``, else ``<data dir>/admin.key``, which ``conat up`` writes): a path, never
the key, since command lines and environments are not secret. Results are one line each, or one
JSON object per line with ``--json``. Errors exit with the CLI's codes: 2 for an error master
answered (``unknown-project``, ``host-offline``, ``no-capacity``, ``already-running``...: the code is
printed), 6 when master cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import click
import msgspec

import conat
from conat.cli.plugin import Options, Printer, common_options, run, stop_on_signals
from conat.platform import HostInfo, MoveResult, Project
from persist import bootlog

from ._client import MasterApi, connect
from ._config import MasterConfig
from ._server import ADMIN_KEY, MasterServer

__all__ = ["bootlog_group", "hosts_group", "master_group", "projects_group"]

T = TypeVar("T")
KEY_ENV: Final = "CONAT_API_KEY_FILE"


def _key_file(path: Path | None) -> Path:
    if path is not None:
        return path
    from_env = os.environ.get(KEY_ENV)
    return Path(from_env) if from_env else conat.data_dir() / ADMIN_KEY


_key_option: Final = click.option(
    "--api-key-file",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"An API key file (0600). Default: ${KEY_ENV}, else <data dir>/admin.key (written by conat up).",
)


def _call(key_file: Path | None, work: Callable[[MasterApi], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await connect(_key_file(key_file)) as api:
            return await work(api)

    return run(main())


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _project_line(p: Project) -> str:
    reason = f" ({p.reason})" if p.reason else ""
    return f"{p.project_id}  {p.state:<9} {p.desired:<8} host {p.host_id or '-'}  {p.title!r}{reason}"


def _host_line(h: HostInfo) -> str:
    return (
        f"{h.host_id}  {h.status:<8} {h.projects}/{h.capacity} projects  {h.name!r}"
        f"{' shared' if h.shared else ''}{f' ({h.provider})' if h.provider else ''}  {h.bus_url or '-'}"
    )


# -- conat master -------------------------------------------------------------------------------


@click.group("master")
def master_group() -> None:
    """The control plane: accounts, hosts, placement, projects, moves."""


@master_group.command("serve", short_help="Run master until Ctrl-C.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A TOML file with a [master] table.")  # fmt: skip
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Default: <data dir>/master."
)
@click.option("--port", type=click.IntRange(0, 65535), help="master's bus port (0: random, then remembered).")
@click.option("--admin-key", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the admin's API key file here (0600), making the admin if needed.")  # fmt: skip
@common_options
@click.pass_obj
def serve(
    opts: Options, config_file: Path | None, data_dir: Path | None, port: int | None, admin_key: Path | None
) -> None:
    """Serve master on its own bus until Ctrl-C or SIGTERM."""
    if config_file is not None:
        config = MasterConfig.from_toml(config_file.read_text())
    else:
        config = MasterConfig(data_dir=str((data_dir or conat.data_dir() / "master").absolute()))
    if port is not None:
        config = msgspec.structs.replace(config, port=port)
    out = Printer(opts.json)

    async def main() -> None:
        with stop_on_signals() as stop:
            async with MasterServer(config) as server:
                key = await server.ensure_admin(admin_key) if admin_key is not None else None
                out.event(
                    f"master ready on {server.url}" + (f", admin API key in {admin_key}" if key else "")
                    + "\nPress Ctrl-C to stop.",
                    event="ready", url=server.url, admin_key=str(admin_key) if key else None,
                )  # fmt: skip
                await stop.wait()

    try:
        run(main())
    except KeyboardInterrupt:
        pass
    out.event("master stopped", event="stopped")


# -- conat projects -----------------------------------------------------------------------------


@click.group("projects")
def projects_group() -> None:
    """Projects of the account of an API key file."""


@projects_group.command("create")
@click.argument("title")
@click.option("--host", "host_id", help="A host to put it on (default: placement chooses).")
@_key_option
@common_options
@click.pass_obj
def projects_create(opts: Options, title: str, host_id: str | None, key_file: Path | None) -> None:
    """Create a project; prints it."""
    project = _call(key_file, lambda api: api.projects.create(title, host_id))
    Printer(opts.json).event(_project_line(project), **_builtins(project))


@projects_group.command("list")
@_key_option
@common_options
@click.pass_obj
def projects_list(opts: Options, key_file: Path | None) -> None:
    """The account's projects (an admin: every project)."""
    out = Printer(opts.json)
    for project in _call(key_file, lambda api: api.projects.list()):
        out.event(_project_line(project), **_builtins(project))


@projects_group.command("start")
@click.argument("project_id")
@click.option("--wait", is_flag=True, help="Return once it runs (or failed).")
@_key_option
@common_options
@click.pass_obj
def projects_start(opts: Options, project_id: str, wait: bool, key_file: Path | None) -> None:
    """Start a project (a second start exits 2 with code already-running)."""
    project = _call(key_file, lambda api: api.projects.start(project_id, wait))
    Printer(opts.json).event(_project_line(project), **_builtins(project))


@projects_group.command("stop")
@click.argument("project_id")
@click.option("--wait", is_flag=True, help="Return once it is stopped.")
@_key_option
@common_options
@click.pass_obj
def projects_stop(opts: Options, project_id: str, wait: bool, key_file: Path | None) -> None:
    """Stop a project."""
    project = _call(key_file, lambda api: api.projects.stop(project_id, wait))
    Printer(opts.json).event(_project_line(project), **_builtins(project))


@projects_group.command("status")
@click.argument("project_id")
@_key_option
@common_options
@click.pass_obj
def projects_status(opts: Options, project_id: str, key_file: Path | None) -> None:
    """A project's state, asked of its host now (unknown if the host is offline)."""
    project = _call(key_file, lambda api: api.projects.status(project_id))
    Printer(opts.json).event(_project_line(project), **_builtins(project))


@projects_group.command("move")
@click.argument("project_id")
@click.argument("host_id")
@_key_option
@common_options
@click.pass_obj
def projects_move(opts: Options, project_id: str, host_id: str, key_file: Path | None) -> None:
    """Move a project to another host (waits; on failure it stays intact where it was)."""
    result: MoveResult = _call(key_file, lambda api: api.projects.move(project_id, host_id, True))
    transfer = (
        f", {result.transfer.bytes} bytes sha256 {result.transfer.sha256[:16]}..." if result.transfer else ""
    )
    Printer(opts.json).event(
        f"moved {project_id} from {result.source} to {result.destination} in {result.seconds:.1f} s "
        f"(downtime {result.downtime:.1f} s{transfer})",
        **_builtins(result),
    )


@projects_group.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("project_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", type=click.FloatRange(0, 3600, min_open=True), default=60.0, show_default=True)
@_key_option
@common_options
@click.pass_obj
def projects_exec(
    opts: Options, project_id: str, command: tuple[str, ...], timeout: float, key_file: Path | None
) -> None:
    """Run COMMAND in a running project; prints its output and exits with its exit code."""
    result = _call(key_file, lambda api: api.projects.exec(project_id, list(command), timeout))
    if opts.json:
        Printer(True).event("", stdout=result.stdout.decode(errors="replace"),
                            stderr=result.stderr.decode(errors="replace"), code=result.code,
                            signal=result.signal, timed_out=result.timed_out)  # fmt: skip
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stderr.buffer.write(result.stderr)
        sys.stdout.flush()
    if result.code:
        raise click.exceptions.Exit(result.code)


# -- conat hosts --------------------------------------------------------------------------------


@click.group("hosts")
def hosts_group() -> None:
    """Hosts the account of an API key file owns, collaborates on, or may use."""


@hosts_group.command("list")
@_key_option
@common_options
@click.pass_obj
def hosts_list(opts: Options, key_file: Path | None) -> None:
    """Hosts: id, status, projects/capacity, name, bus URL."""
    out = Printer(opts.json)
    for host in _call(key_file, lambda api: api.hosts.list()):
        out.event(_host_line(host), **_builtins(host))


@hosts_group.command("create")
@click.argument("name")
@click.option("--provider", help="Let master start it (e.g. local); else print a join token.")
@click.option("--capacity", type=click.IntRange(0, 1_000_000), default=100, show_default=True)
@click.option("--shared", is_flag=True, help="Every account may place projects there.")
@click.option("--join-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the join token here (0600) instead of printing it.")  # fmt: skip
@_key_option
@common_options
@click.pass_obj
def hosts_create(
    opts: Options, name: str, provider: str | None, capacity: int, shared: bool, join_token_file: Path | None,
    key_file: Path | None,
) -> None:  # fmt: skip
    """Create a host (its one-time join token is for `conat host serve --join-token-file`)."""
    made = _call(key_file, lambda api: api.hosts.create(name, "", capacity, shared, provider))
    out = Printer(opts.json)
    if made.join_token and join_token_file is not None:
        from conat.auth import write_private_file

        write_private_file(join_token_file, made.join_token.encode())
    shown = made.join_token if join_token_file is None else str(join_token_file)
    out.event(_host_line(made.host) + (f"\njoin token: {shown}" if made.join_token else ""),
              host=_builtins(made.host), join_token=shown if made.join_token else None)  # fmt: skip


@hosts_group.command("delete")
@click.argument("host_id")
@_key_option
@common_options
@click.pass_obj
def hosts_delete(opts: Options, host_id: str, key_file: Path | None) -> None:
    """Delete a host that holds no projects (its credentials are revoked at once)."""
    _call(key_file, lambda api: api.hosts.delete(host_id))
    Printer(opts.json).event(f"deleted host {host_id}", event="deleted", host_id=host_id)


# -- conat bootlog ------------------------------------------------------------------------------


@click.group("bootlog")
def bootlog_group() -> None:
    """Bootlogs: the progress of starting (and moving) a project."""


@bootlog_group.command("follow")
@click.argument("project_id")
@click.option("--no-history", is_flag=True, help="Only new events.")
@click.option("--until-ready", is_flag=True, help="Stop at the first ready, error or crash event.")
@_key_option
@common_options
@click.pass_obj
def bootlog_follow(
    opts: Options, project_id: str, no_history: bool, until_ready: bool, key_file: Path | None
) -> None:
    """Print a project's bootlog, then follow it live (Ctrl-C stops)."""
    out = Printer(opts.json)

    async def main() -> None:
        with stop_on_signals() as stop:
            async with await connect(_key_file(key_file)) as api, await api.open_project(project_id) as host:
                follow = _print_events(host, project_id, not no_history, until_ready, out)
                task = asyncio.ensure_future(follow)
                waiter = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                for pending in (task, waiter):
                    pending.cancel()
                if task in done:
                    task.result()

    try:
        run(main())
    except KeyboardInterrupt:
        pass


async def _print_events(
    host: conat.Client, project_id: str, history: bool, until_ready: bool, out: Printer
) -> None:
    async for event in bootlog.events(host, project_id=project_id, history=history):
        shown = f"{event.progress:3.0f}%" if event.progress is not None else "    "
        error = f"  error: {event.error}" if event.error else ""
        out.event(f"{shown} {event.phase:<14} {event.message}{error}", **_builtins(event))
        if until_ready and event.phase in ("ready", "error", "crash"):
            return
