"""``conat persist serve``: the persist service alone, in the foreground, until Ctrl-C or SIGTERM.

Registered with the ``conat`` CLI through the ``conat.commands`` entry point group (re-exported by
:mod:`persist._cli`). Exit codes: the CLI's table (1 also for a root in use by another persist
service, code ``root-in-use``), and :data:`EXIT_GAVE_UP` when the service gave up after repeated
crashes, so a supervisor (systemd, a container runtime) starts a fresh one instead of keeping a
process that serves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Final

import click

from actors import Escalation
from conat.cli.plugin import EXIT_GAVE_UP, Options, Printer, common_options, run, stop_on_signals

from ._placement import Placement
from ._service import PersistServer

__all__ = ["EXIT_GAVE_UP", "SUBJECT", "persist_group"]

SUBJECT: Final = "persist.*.>"


@click.group("persist", short_help="Run the persist service.")
def persist_group() -> None:
    """The persist service: streams and KV stores of every scope, in SQLite files."""


@persist_group.command("serve", short_help="Serve persist.*.> until Ctrl-C.")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Root directory of the stream files (overrides $CONAT_SYNC; default <data dir>/sync).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TOML file whose [sync] table places the files ($CONAT_SYNC* win, key by key).",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds operations in flight may take to answer on Ctrl-C/SIGTERM.",
)
@common_options
@click.pass_obj
def serve(opts: Options, root: Path | None, config_file: Path | None, stop_timeout: float) -> None:
    """Serve persist.*.> (every scope) on the bus until Ctrl-C or SIGTERM.

    Files are placed by $CONAT_SYNC, $CONAT_SYNC_PROJECTS|ACCOUNTS|HOSTS|HUB (or a TOML [sync]
    table). On a stop, intake ends, operations in flight answer within --stop-timeout (waiting
    changefeed reads get 'stopping', and their clients retry elsewhere), then files are closed.
    """
    env = dict(os.environ)
    if root is not None:
        env["CONAT_SYNC"] = str(root.absolute())
    toml = config_file.read_bytes() if config_file is not None else None
    placement = Placement.from_sources(env=env, toml=toml)
    out = Printer(opts.json)
    try:
        run(_serve(opts, out, placement, stop_timeout))
    except KeyboardInterrupt:
        pass
    except Escalation as e:
        click.echo(f"conat: error: the persist service gave up: {e} (code {e.code})", err=True)
        out.event("persist service failed", event="failed", code=e.code)
        raise click.exceptions.Exit(EXIT_GAVE_UP) from None
    out.event("persist service stopped", event="stopped")


async def _serve(opts: Options, out: Printer, placement: Placement, stop_timeout: float) -> None:
    """Serve until a signal, or until the service gives up (then raise its :class:`Escalation`)."""
    with stop_on_signals() as stop:
        async with await opts.connect("conat-persist") as client:
            server = await PersistServer(client, placement).start()
            try:
                out.event(
                    f"persist service ready on {SUBJECT} (files under {placement.root})\nPress Ctrl-C to stop.",
                    event="ready", subject=SUBJECT, root=placement.root, url=client.connected_url,
                )  # fmt: skip
                stopped = asyncio.ensure_future(stop.wait())
                failed = asyncio.ensure_future(_stopped(server))
                try:
                    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                    failed.cancel()
            finally:
                await server.aclose(stop_timeout)
            if server.failure is not None:
                raise server.failure


async def _stopped(server: PersistServer) -> None:
    """Return when ``server`` stopped by itself (it gave up: ``server.failure`` says why)."""
    with contextlib.suppress(Escalation):
        await server.wait()
