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

from actors import Escalation, Partitions, partition_option, serving_workers, worker_options
from conat.cli.plugin import EXIT_GAVE_UP, Options, Printer, common_options, run, stop_on_signals

from ._placement import Placement
from ._server import PersistServer
from ._service import SUBJECT, PersistService
from ._workers import Workers

__all__ = ["EXIT_GAVE_UP", "SUBJECT", "persist_group"]

_MAX_WORKERS: Final = 64


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
@click.option(
    "--workers",
    type=click.IntRange(1, _MAX_WORKERS),
    default=1,
    show_default=True,
    help="Processes serving the scopes, each one partition of them (one core each). The bus must"
    " split persist.*.> as many ways: `conat up --workers N` does.",
)
@click.option(
    "--partition",
    metavar="I/N",
    callback=partition_option,
    help="Serve only partition I of N of the scopes (what each of --workers N runs).",
)
@common_options
@click.pass_obj
def serve(
    opts: Options,
    root: Path | None,
    config_file: Path | None,
    stop_timeout: float,
    workers: int,
    partition: Partitions | None,
) -> None:
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
    if workers > 1 and partition is not None:
        raise click.UsageError("--workers starts the partitions itself: give it or --partition, not both")
    try:
        if workers > 1:
            files = ["--root", str(root.absolute())] if root is not None else []
            if config_file is not None:
                files += ["--config", str(config_file.absolute())]
            run(_serve_workers(opts, out, workers, files, stop_timeout))
        else:
            run(_serve(opts, out, placement, stop_timeout, partition))
    except KeyboardInterrupt:
        pass
    except Escalation as e:
        click.echo(f"conat: error: the persist service gave up: {e} (code {e.code})", err=True)
        out.event("persist service failed", event="failed", code=e.code)
        raise click.exceptions.Exit(EXIT_GAVE_UP) from None
    out.event("persist service stopped", event="stopped")


async def _serve_workers(
    opts: Options, out: Printer, count: int, files: list[str], stop_timeout: float
) -> None:
    """Run ``count`` partitioned workers (:mod:`persist._workers`) until a signal; ready once each
    partition answers through the bus."""
    with stop_on_signals() as stop:
        async with await opts.connect("conat-persist-workers") as client:
            url = client.connected_url or opts.url or ""  # the workers connect where this did
            args = [*worker_options(client, opts), "--stop-timeout", str(stop_timeout), *files]
            workers = Workers(count, args, stop_timeout=stop_timeout)
            spec = PersistService.spec()
            async with serving_workers(client, workers, [(SUBJECT, spec.subject_for)]):
                out.event(
                    f"persist service: {count} workers on {SUBJECT} (pids {workers.pids})\nPress Ctrl-C to stop.",
                    event="ready", subject=SUBJECT, workers=count, pids=workers.pids, url=url,
                )  # fmt: skip
                await stop.wait()


async def _serve(
    opts: Options,
    out: Printer,
    placement: Placement,
    stop_timeout: float,
    partition: Partitions | None = None,
) -> None:
    """Serve until a signal, or until the service gives up (then raise its :class:`Escalation`)."""
    with stop_on_signals() as stop:
        async with await opts.connect("conat-persist") as client:
            server = await PersistServer(client, placement, partitions=partition).start()
            try:
                part = "" if partition is None else f", partition {partition}"
                out.event(
                    f"persist service ready on {SUBJECT}{part} (files under {placement.root})\nPress Ctrl-C to stop.",
                    event="ready", subject=SUBJECT, root=placement.root, url=client.connected_url,
                    partition=None if partition is None else partition.owned[0],
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
