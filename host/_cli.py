"""``conat host serve | status``: run a project host, and look at one.

Registered through the ``conat.commands`` entry point group, so conat never imports host.

- ``conat host serve [--config FILE]``: a complete host (:class:`~host.HostServer`) until Ctrl-C or
  SIGTERM. Without ``--config``, a local host: data under ``<conat data dir>/host``, with a local
  key ring there that mints the host's, its projects' and the local admin's tokens.
- ``conat host status [--config FILE | --data-dir DIR] [--json]``: the host's projects, their state
  and resource use, and the isolation the host can give. It reads the running host's ``host.json``
  (url, host id) and, on a local host, the admin token the host wrote (``admin.token``, 0600);
  ``--url``/``--credentials``/``--host-id`` name another host.

Exit codes are the CLI's: 0 ok, 1 bad input, 2 remote error, 3 timeout, 4 no runner answered,
5 forbidden (only master's principal may ask a runner), 6 cannot connect.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

import click
import msgspec

import conat
from conat.cli.plugin import Options, Printer, common_options, run, stop_on_signals

from ._agent import agent_setup, serve_agent
from ._config import HostConfig
from ._runner import runner_proxy
from ._server import ADMIN_TOKEN, HostServer, read_host_state
from ._wire import HostStatus, ProjectStatus

__all__ = ["host_group", "local_config", "status_lines"]

_MIB: Final = 1024 * 1024


def local_config(data_dir: Path | None = None) -> HostConfig:
    """A local host's config: data under ``<conat data dir>/host``, minting with a local key ring."""
    data = data_dir or conat.data_dir() / "host"
    return HostConfig(data_dir=str(data.absolute()), signing_keys=str(data.absolute() / "keys"))


def _load_config(config_file: Path | None) -> HostConfig:
    if config_file is None:
        return local_config()
    try:
        return HostConfig.from_toml(config_file.read_text())
    except conat.ConatError as e:
        raise click.BadParameter(str(e), param_hint="--config") from None


@click.group("host")
def host_group() -> None:
    """A project host: its runner, project processes, persist and bootlogs on its own bus."""


_config_option: Final = click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TOML file with a [host] table (default: a local host under <data dir>/host).",
)


@host_group.command("serve", short_help="Run a project host until Ctrl-C.")
@_config_option
@click.option("--master", help="Master's bus URL: the host registers there and serves master's commands.")
@click.option(
    "--join-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The one-time join token (0600).",
)
@click.option(
    "--join-token", help="The join token itself (visible to local users in ps: prefer --join-token-file)."
)
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="With --master: the host's data dir."
)
@common_options
@click.pass_obj
def serve(
    opts: Options, config_file: Path | None, master: str | None, join_token_file: Path | None,
    join_token: str | None, data_dir: Path | None,
) -> None:  # fmt: skip
    """Serve a project host on its own bus until Ctrl-C or SIGTERM (with --master or an [agent]
    table: registered with master, serving its commands)."""
    out = Printer(opts.json)
    agent = agent_setup(config_file, master, join_token_file, join_token, data_dir)
    try:
        run(_serve(_load_config(config_file), out) if agent is None else serve_agent(*agent, out))
    except KeyboardInterrupt:
        pass
    out.event("host stopped", event="stopped")


async def _serve(config: HostConfig, out: Printer) -> None:
    with stop_on_signals() as stop:
        started = time.monotonic()
        async with HostServer(config) as server:
            missing = server.projects.capabilities.report().missing if server.projects else {}
            out.event(
                f"host {server.host_id} ready on {server.url} in {time.monotonic() - started:.2f} s"
                + (f" (missing isolation: {', '.join(sorted(missing))})" if missing else "")
                + "\nPress Ctrl-C to stop.",
                event="ready", host_id=server.host_id, url=server.url, missing=missing,
                reconciled=server.reconciled,
            )  # fmt: skip
            await stop.wait()


@host_group.command("status", short_help="The host's projects, states and resource use.")
@_config_option
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="The host's data dir.")
@click.option("--host-id", help="The host's id (with --url, for a host whose data dir is elsewhere).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True)
@common_options
@click.pass_obj
def status(
    opts: Options, config_file: Path | None, data_dir: Path | None, host_id: str | None, timeout: float
) -> None:
    """Print the host's projects (a table; --json for one JSON object)."""
    data = data_dir or (_load_config(config_file).data if config_file or not opts.url else None)
    url, ident, credentials = opts.url, host_id, opts.credentials
    if data is not None:
        state = read_host_state(data)
        if state is None or not state.get("pid"):
            raise click.ClickException(f"no running host found in {data} (start one with `conat host serve`)")
        url = url or state["url"]
        ident = ident or state["host_id"]
        if credentials is None and (data / ADMIN_TOKEN).exists():
            credentials = str(data / ADMIN_TOKEN)
    if url is None or ident is None:
        raise click.UsageError("name the host: --config, --data-dir, or --url with --host-id")
    result = run(_status(url, ident, credentials, timeout))
    out = Printer(opts.json)
    if opts.json:
        out.event("", **conat_builtins(result))
    else:
        for line in status_lines(result):
            out.event(line)


def conat_builtins(value: HostStatus) -> dict[str, object]:
    built: dict[str, object] = msgspec.to_builtins(value)
    return built


async def _status(url: str, host_id: str, credentials: str | None, timeout: float) -> HostStatus:
    creds = Path(credentials) if credentials else None
    async with await conat.connect(url, name="conat-host-status", credentials=creds) as client:
        return await runner_proxy(client, host_id, timeout=timeout).host_status()


def _usage(project: ProjectStatus) -> tuple[str, str, str, str]:
    usage = project.usage
    if usage is None:
        return "-", "-", "-", "-"
    return (
        f"{usage.cpu_seconds:.1f}",
        f"{usage.memory_bytes / _MIB:.0f}/{project.limits.memory_mb}",
        f"{usage.pids}/{project.limits.pids}",
        f"{usage.uptime:.0f}s",
    )


def status_lines(status: HostStatus) -> list[str]:
    """The human table of ``conat host status``."""
    caps = status.capabilities
    lines = [f"host {status.host_id} on {status.url}: {len(status.projects)} projects"]
    lines.append(f"isolation: {', '.join(caps.applied)}")
    lines.extend(f"  missing {name}: {why}" for name, why in sorted(caps.missing.items()))
    header = ("PROJECT", "STATE", "PID", "CPU s", "MEM MB", "PIDS", "UP", "NOTE")
    rows = [header]
    for project in status.projects:
        note = project.reason or ", ".join(f"no {m}" for m in sorted(project.isolation.missing))
        rows.append((project.project_id, project.state, str(project.pid or "-"), *_usage(project), note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines.extend(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    )
    return lines
