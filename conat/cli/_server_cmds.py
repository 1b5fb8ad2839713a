"""``conat server`` (a private nats-server in the foreground) and ``conat up`` (the bus plus a demo).

Both publish the server in the state file while it runs, so other commands (and
``conat.connect()`` with no URL) find it; both stop cleanly on Ctrl-C, SIGTERM or SIGHUP (a closed
terminal), with exit code 0, and remove the state file. Their nats-server dies with them even when
they are killed (``kill -9``): see :mod:`conat._process`. ``conat status`` shows them, ``conat down``
stops them (:mod:`conat.cli._lifecycle`), and an orphaned nats-server is stopped before a new start.

``conat up`` also runs the service and demo step of every installed :class:`~conat.cli._demo.UpExtension`
(persist's, found through an entry point, so this module never imports persist).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import click

from conat import ConatError
from conat._paths import state_path
from conat._server import NatsServer, serve_forever
from conat._server_config import DEFAULT_MAX_PAYLOAD, MAX_PAYLOAD_LIMIT, ServerConfig, WebsocketConfig
from conat.auth import BusJoin
from subjects import MASTER_BUS

from ._app import Options, json_option, run, stop_on_signals, until_stopped
from ._auth_cmds import auth_keys, check_bus, keys_option, public_keys_option, serve_auth
from ._cluster_cmds import cluster_config, config_file, serve_node
from ._demo import (
    COUNT,
    GREETER,
    SOCKETS,
    UpExtension,
    UpOptions,
    conversation,
    demo_service,
    hint_commands,
    line,
    up_extensions,
)
from ._lifecycle import ensure_not_running
from ._output import Printer

__all__ = ["server", "up"]

_port = click.IntRange(0, 65535)


def _server_config(
    host: str, port: int, allow_remote: bool, max_payload: int, websocket_port: int | None
) -> ServerConfig:
    try:
        websocket = None if websocket_port is None else WebsocketConfig(host=host, port=websocket_port)
        return ServerConfig(
            host=host, port=port, allow_remote=allow_remote, max_payload=max_payload, websocket=websocket
        )
    except ValueError as e:
        hint = " (add --allow-remote)" if "allow_remote" in str(e) else ""
        raise click.UsageError(f"{e}{hint}") from None


# -- server -----------------------------------------------------------------------------------


@click.command(short_help="Run a private nats-server in the foreground.")
@click.option(
    "--port", "-p", type=_port, default=0, show_default=True, help="Client port (0: a random free one)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--allow-remote", is_flag=True, help="Allow a --host that is not a loopback address.")
@click.option(
    "--max-payload",
    type=click.IntRange(1, MAX_PAYLOAD_LIMIT),
    default=DEFAULT_MAX_PAYLOAD,
    show_default=True,
    metavar="BYTES",
    help="Largest single NATS message (conat chunks bigger payloads).",
)
@click.option("--websocket-port", type=_port, help="Also listen for websocket clients (0: random port).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the config, log and state file go (default: $CONAT_DATA_DIR, else ~/.local/share/conat).",
)
@click.option(
    "--auth", is_flag=True, help="Accept only clients with a token signed by your keys (`conat auth keygen`)."
)
@click.option(
    "--bus",
    help="With --auth: the bus this is (the audience its tokens name): master (the default) or host-<uuid>.",
)
@keys_option("With --auth: the signing keys whose tokens it accepts (default: <data dir>/keys).")
@public_keys_option("With --auth: pinned public keys instead (`conat auth keygen --export FILE`).")
@click.option(
    "--cluster", "cluster_name", metavar="NAME", help="Be a node of cluster NAME (routes to other nodes)."
)
@click.option(
    "--cluster-port",
    type=_port,
    default=0,
    show_default=True,
    help="With --cluster: the route port (0: random).",
)
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="URL",
    help="With --cluster: a node to connect to, nats-route://HOST:PORT (repeatable; one is enough).",
)
@click.option(
    "--node", help="This node's name (its nats-server's; with --auth or --join: conat-<bus>.<node>)."
)
@click.option(
    "--join",
    "join_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Run a node of a bus with auth, from its join file (`conat auth join` on its first node).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The server's options from a TOML file (port, cluster {name, port, routes}, leafnodes {...}...).",
)
@json_option
@click.pass_context
def server(
    ctx: click.Context,
    port: int,
    host: str,
    allow_remote: bool,
    max_payload: int,
    websocket_port: int | None,
    data_dir: Path | None,
    auth: bool,
    bus: str | None,
    keys: Path | None,
    public_keys: Path | None,
    cluster_name: str | None,
    cluster_port: int,
    routes: tuple[str, ...],
    node: str | None,
    join_file: Path | None,
    config_path: Path | None,
) -> None:
    """Run a private nats-server in the foreground until Ctrl-C, SIGTERM or SIGHUP (`conat down`).

    Prints its URL once it is ready and publishes it in the state file, so that `conat pub`,
    `conat req`, ... (and conat.connect() with no URL) find it.

    With --auth it is a bus with the auth callout: only clients with a valid token connect
    (`conat auth token ... -o FILE`, then `conat --credentials FILE ...`), each with the
    permissions its token grants; every decision goes to the audit log under
    <data dir>/buses/<bus>.

    With --cluster it is a node of a cluster: give the others a --route to it (its route URL is
    printed). With --auth too, it is the first node of a bus on a cluster, and
    `conat auth join -o FILE` writes what the other nodes need; they run with --join FILE.
    `conat status` shows the routes and leaf links. --config FILE takes the options from a TOML
    file instead of the flags.
    """
    opts: Options = ctx.obj
    if config_path is not None:
        given = [f"--{n.replace('_', '-')}" for n in _FLAG_OPTIONS if _given(ctx, n)]
        if given:
            raise click.UsageError(
                f"--config takes the server's options from the file: drop {', '.join(given)}"
            )
        config = config_file(config_path)
    else:
        config = _server_config(host, port, allow_remote, max_payload, websocket_port)
    config = cluster_config(config, cluster_name, cluster_port, routes, None if join_file else node)
    if not auth and (keys is not None or public_keys is not None or bus is not None):
        raise click.UsageError("--bus, --keys and --public-keys go with --auth")
    if join_file is not None and (auth or cluster_name is not None):
        raise click.UsageError(
            "--join runs a node of an existing bus: its bus and cluster come from the file"
        )
    if data_dir is not None:
        os.environ["CONAT_DATA_DIR"] = str(data_dir.absolute())
    out = Printer(opts.json)
    # with --auth, checked before anything starts: a bad bus name or missing keys exit 1 at once
    accepted = (check_bus(bus or MASTER_BUS), auth_keys(keys, public_keys)) if auth else None
    join = _read_join(join_file) if join_file is not None else None
    ensure_not_running(out)
    try:
        if accepted is not None:
            run(serve_auth(config, out, bus=accepted[0], public_keys=accepted[1]))
        elif join is not None:
            run(serve_node(join, node or secrets.token_hex(3), config, out))
        else:
            run(serve_forever(config, on_ready=lambda s: _announce_server(out, s)))
    except KeyboardInterrupt:
        pass
    out.event("conat server stopped", event="stopped")


_FLAG_OPTIONS = ("port", "host", "allow_remote", "max_payload", "websocket_port", "cluster_port")


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source is not click.core.ParameterSource.DEFAULT


def _read_join(path: Path) -> BusJoin:
    try:
        return BusJoin.read(path)
    except (ValueError, ConatError) as e:
        raise click.UsageError(f"--join {path}: {e}") from None


def _announce_server(out: Printer, srv: NatsServer) -> None:
    if out.json:
        out.event(
            "",
            event="ready",
            url=srv.url,
            pid=srv.pid,
            websocket_url=srv.websocket_url,
            cluster_url=srv.cluster_url,
            leafnode_url=srv.leafnode_url,
            log_path=str(srv.log_path),
            state_path=str(state_path()),
        )
        return
    lines = [f"conat server ready at {srv.url} (nats-server pid {srv.pid})"]
    if srv.websocket_url is not None:
        lines.append(f"  websocket: {srv.websocket_url}")
    if (cluster := srv.config.cluster) is not None:
        lines.append(f"  cluster:   {cluster.name}: other nodes take --route {srv.cluster_url}")
    if srv.leafnode_url is not None:
        lines.append(f"  leafnodes: {srv.leafnode_url}")
    lines.append(f"  log:       {srv.log_path}")
    lines.append(f"  state:     {state_path()}")
    lines.append("Press Ctrl-C to stop.")
    out.event("\n".join(lines))


# -- up ---------------------------------------------------------------------------------------


@click.command(short_help="Start the local bus and a demo service, and show them talking.")
@click.option(
    "--port", "-p", type=_port, default=0, show_default=True, help="Client port (0: a random free one)."
)
@click.option("--once", is_flag=True, help="Run the demo conversation, then stop everything and exit.")
@click.option(
    "--hosts", type=click.IntRange(0, 64), default=1, show_default=True, help="Local project hosts to run."
)
@click.option(
    "--demo", is_flag=True, help="Walk through the platform: a project, its live bootlog, files, exec."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes of each partitioned service (persist), its keys split among them by the bus.",
)
@json_option
@click.pass_obj
def up(opts: Options, port: int, once: bool, hosts: int, demo: bool, workers: int) -> None:
    """Start the whole platform on this machine, show it working, and keep it running.

    Starts a nats-server (like `conat server`), serves a small greeter service on public.demo.*
    and the services of installed extensions: persist (streams and KV stores in SQLite files
    under the data dir) and the platform (master on its own bus, with --hosts local project hosts
    on theirs, and an admin API key in a 0600 file). Then, as a client, it makes typed requests,
    reads a stream, does a pub/sub round trip, sends an 8 MiB (chunked) request, writes and reads
    back a persisted stream and a KV key, and runs a project, printing one line per step (--demo:
    a longer walk through a project, its live bootlog, its files and a command). Then it keeps
    everything up until Ctrl-C, SIGTERM or SIGHUP, or `conat down` from another terminal (with
    --once: it stops and exits 0). Every process it starts dies with it, even if it is killed.
    With --workers N, persist runs as N processes, the bus splitting its keys among them.
    """
    out = Printer(opts.json)
    ensure_not_running(out)
    mappings: dict[str, str] = {}
    for extension in up_extensions():
        extension.workers = workers
        mappings.update(extension.mappings(workers))
    try:
        options = UpOptions(hosts=hosts, demo=demo, once=once)
        run(_up(out, ServerConfig(port=port, mappings=mappings), once, options))
    except KeyboardInterrupt:
        pass


async def _up(out: Printer, config: ServerConfig, once: bool, options: UpOptions | None = None) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[NatsServer] = loop.create_future()

    def on_ready(srv: NatsServer) -> None:
        if not ready.done():
            ready.set_result(srv)

    server_task = asyncio.create_task(serve_forever(config, on_ready=on_ready))
    try:
        first: set[asyncio.Future[Any]] = {ready, server_task}
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            server_task.result()  # its startup error
            return  # stopped (by a signal) before it was ready
        srv = ready.result()
        out.event(
            line("bus", f"nats-server ready at {srv.url} (pid {srv.pid}, log {srv.log_path})"),
            event="server",
            url=srv.url,
            pid=srv.pid,
            log_path=str(srv.log_path),
        )
        with stop_on_signals() as stop:  # replaces serve_forever's handlers: we stop it ourselves
            server_task.add_done_callback(lambda _: stop.set())
            await _demo(out, srv.url, once, stop, options or UpOptions(once=once))
        if server_task.done():
            server_task.result()  # ServerError if it died on its own; None if a signal stopped it
    finally:
        if not server_task.done():
            server_task.cancel()
        await asyncio.gather(server_task, return_exceptions=True)
    out.event(line("bus", "stopped"), event="stopped")


async def _demo(out: Printer, url: str, once: bool, stop: asyncio.Event, options: UpOptions) -> None:
    extensions = up_extensions()  # persist's service and demo step, when installed (no import of it here)
    for extension in extensions:
        extension.configure(options)
    async with demo_service(url), contextlib.AsyncExitStack() as running:
        out.event(
            line(
                "service",
                f"{GREETER}: greet, stats, echo (typed RPC); {COUNT}: stream 1..n; "
                f"{SOCKETS}.*: socket, echoes upper-cased",
            ),
            event="service",
            rpc=GREETER,
            methods=["greet", "stats", "echo"],
            stream=COUNT,
            socket=f"{SOCKETS}.*",
        )
        for extension in extensions:
            await running.enter_async_context(extension.serve(url, out))
        if await until_stopped(stop, _converse(out, url, extensions)) is None:
            return  # interrupted
        out.event(line("demo", "ok"), event="demo", ok=True)
        if once:
            return
        hints = hint_commands() + [hint for extension in extensions for hint in extension.hints()]
        first, *others = hints
        out.event(
            f"conat is up at {url} — try: {first}\nCtrl-C stops the bus (also try: {'; '.join(others)})",
            event="up",
            url=url,
            try_commands=hints,
        )
        await stop.wait()


async def _converse(out: Printer, url: str, extensions: list[UpExtension]) -> bool:
    await conversation(url, out)
    for extension in extensions:
        await extension.demo(url, out)
    return True
