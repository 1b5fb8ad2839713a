"""A private nats-server: start it, learn its ports from its log, stop it.

Theory of operation
-------------------
:class:`NatsServer` writes the config rendered by :mod:`conat._server_config` to a 0600 file and runs
``nats-server -c <file>`` in its own session (a Ctrl-C in the parent's terminal does not reach it; the
parent stops it). Nothing secret is ever put in argv or the environment: secrets live in the file, and
the child gets a small allow-listed environment. Unless ``die_with_parent=False``, the kernel also
stops it (SIGTERM) when the thread that started it exits, even by ``kill -9``: see
:func:`conat._process.die_with_parent`.

The child's stdout and stderr share one pipe, read by an asyncio *subprocess protocol*
(:class:`~conat._server_process.OutputReader`, with the rest of the child process's plumbing in
:mod:`conat._server_process`): every chunk the loop reads is appended to the log file and fed to
:class:`StartupLog` (in :mod:`conat._server_log`), a sans-IO parser. Because the loop reads the
pipe on every readiness event for the whole life of the process, the pipe never fills and
nats-server never blocks on a log write; there is no drain task to cancel.

:class:`StartupLog` turns log lines into a readiness decision::

    "Listening for client connections on H:P"      -> ports.client
    "Listening for websocket clients on ws://H:P"  -> ports.websocket
    "Listening for route connections on H:P"       -> ports.cluster      (logged after "ready")
    "Listening for leafnode connections on H:P"    -> ports.leafnodes
    "Starting http monitor on H:P"                 -> ports.monitor
    "Server is ready"                               -> ready, once every configured listener is known
    "[FTL] ... address already in use"              -> PortInUse
    "[FTL] ..." / "nats-server: <complaint>"         -> ServerConfigRejected

A process that exits before it is ready raises the error of its fatal line (or :class:`ServerError` with
the last lines of its log); no readiness within ``startup_timeout`` kills it and raises ServerError.

After the first start the server remembers its actual ports, so :meth:`NatsServer.restart` (and any
later :meth:`~NatsServer.start`) binds the same ones: clients reconnect to the URL they know.

The synchronous :meth:`NatsServer.start_sync` / :meth:`NatsServer.stop_sync` run the same coroutines
in a private event loop thread (an anyio blocking portal), so synchronous callers (pytest session
fixtures, scripts) share one implementation with async ones, and the server does not belong to the
caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Final, final

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.from_thread import BlockingPortal

from . import _process
from ._errors import ServerBinaryNotFound, ServerError
from ._paths import (
    ServerState,
    clear_state,
    data_dir,
    ensure_private_dir,
    pid_alive,
    read_state,
    write_state,
)
from ._server_config import ServerConfig, render
from ._server_log import ServerPorts, StartupLog, expected_listeners
from ._server_process import (
    DEFAULT_STOP_TIMEOUT,
    LogSink,
    OutputReader,
    Run,
    child_env,
    connect_host,
    end,
    find_binary,
    pin_ports,
    wait_any,
)
from .auth._files import write_private_file

__all__ = ["NatsServer", "serve_forever"]

logger = logging.getLogger("conat.server")

CONFIG_FILE_PATTERN: Final = re.compile(r"nats-server-(\d+)-\d+\.conf")
"""Config files are named ``nats-server-<pid>-<n>.conf``: one per :class:`NatsServer`, so servers
sharing a directory (the default one) never run with each other's config."""
LOG_FILE_NAME: Final = "nats-server.log"
DEFAULT_STARTUP_TIMEOUT: Final = 10.0

_instances: Final = itertools.count(1)


@final
class NatsServer:
    """A private nats-server process. Use ``async with NatsServer(config) as server:``.

    Args:
        config: server options; default ``ServerConfig()`` (loopback, random port).
        directory: where the config file goes; created 0700. Default ``<data dir>/server``.
            Each server writes its own file there, ``nats-server-<pid>-<n>.conf`` (mode 0600,
            replaced atomically at every start, removed at stop), so servers may share a directory.
        log_path: the log file (appended, mode 0600). Default ``<directory>/nats-server.log``.
        binary: the nats-server executable; default :func:`find_binary`.
        startup_timeout: seconds to wait for readiness before giving up.
        die_with_parent: the server gets SIGTERM when the thread that started it (the event loop's;
            :meth:`start_sync`'s private thread) exits, however it exits (Linux).

    Not safe to share between event loops: use it from the loop that started it (or, for a server
    started with :meth:`start_sync`, through :meth:`stop_sync`).
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        die_with_parent: bool = True,
    ) -> None:
        self._config = config if config is not None else ServerConfig()
        self._directory = Path(directory) if directory is not None else data_dir() / "server"
        self._log_path = Path(log_path) if log_path is not None else self._directory / LOG_FILE_NAME
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._die_with_parent = die_with_parent
        self._config_path = self._directory / f"nats-server-{os.getpid()}-{next(_instances)}.conf"
        self._ports: ServerPorts | None = None
        self._run: Run | None = None
        self._portal: tuple[AbstractContextManager[BlockingPortal], BlockingPortal] | None = None
        self.started_at: float | None = None
        """When the server last became ready (seconds since the epoch)."""

    # -- properties -------------------------------------------------------------------------------

    @property
    def config(self) -> ServerConfig:
        """The options given (random ports as given, not as pinned)."""
        return self._config

    @property
    def config_path(self) -> Path:
        """This server's own config file (it exists while the server runs)."""
        return self._config_path

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may have died on its own: see :meth:`wait`)."""
        return self._run is not None and self._run.running

    @property
    def pid(self) -> int | None:
        """The process id while running, else ``None``."""
        return self._run.pid if self._run is not None and self._run.running else None

    @property
    def ports(self) -> ServerPorts:
        """The actual ports. Known from the first readiness on, and kept across stop/restart.

        Raises:
            RuntimeError: the server was never started.
        """
        if self._ports is None:
            raise RuntimeError("the nats-server has not been started")
        return self._ports

    @property
    def port(self) -> int:
        return self.ports.client

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:<port>`` (a wildcard bind address maps to loopback)."""
        return f"nats://{connect_host(self._config.host)}:{self.port}"

    @property
    def websocket_url(self) -> str | None:
        ws, port = self._config.websocket, self.ports.websocket
        if ws is None or port is None:
            return None
        return f"{'ws' if ws.no_tls else 'wss'}://{connect_host(ws.host)}:{port}"

    @property
    def cluster_url(self) -> str | None:
        """``nats-route://host:port``: give it to other nodes as a route."""
        cl, port = self._config.cluster, self.ports.cluster
        return None if cl is None or port is None else f"nats-route://{connect_host(cl.host)}:{port}"

    @property
    def leafnode_url(self) -> str | None:
        """``nats-leaf://host:port``: give it to leaf nodes as a remote."""
        leaf, port = self._config.leafnodes, self.ports.leafnodes
        if leaf is None or port is None:
            return None
        return f"nats-leaf://{connect_host(leaf.listen_host)}:{port}"

    @property
    def monitor_url(self) -> str | None:
        """``http://127.0.0.1:<port>`` if monitoring is on."""
        port = self.ports.monitor
        return None if port is None else f"http://127.0.0.1:{port}"

    # -- lifecycle --------------------------------------------------------------------------------

    def _check_loop(self) -> None:
        if self._run is not None and self._run.loop is not asyncio.get_running_loop():
            raise RuntimeError(
                "this NatsServer runs on another event loop (use stop_sync() if started by start_sync())"
            )

    def _prepare(self) -> tuple[Path, ServerConfig, LogSink]:
        binary = find_binary(self._binary)
        ensure_private_dir(self._directory)
        ensure_private_dir(self._log_path.parent)
        _remove_stale_configs(self._directory)
        config = self._config if self._ports is None else pin_ports(self._config, self._ports)
        write_private_file(self.config_path, render(config).encode(), what="nats-server config")
        return binary, config, LogSink(self._log_path)

    def _remove_config(self) -> None:
        """The file is rewritten at every start; between runs it would only keep secrets on disk."""
        with contextlib.suppress(OSError):
            self.config_path.unlink()

    async def start(self) -> None:
        """Start the server and return once it accepts clients on every configured listener.

        Cancellation-safe: if cancelled (or failing) midway, the process is killed before this raises.

        Raises:
            ServerBinaryNotFound: no nats-server executable.
            PortInUse: a configured port is taken (the message has the server's line).
            ServerConfigRejected: the server refused the config (the message has its complaint).
            ServerError: it exited for another reason, or was not ready within ``startup_timeout``.
            RuntimeError: already running.
        """
        if self.running:
            raise RuntimeError("the nats-server is already running")
        if self._run is not None:  # it died on its own: release what is left
            self._run.close()
            self._run = None
        binary, config, sink = self._prepare()
        loop = asyncio.get_running_loop()
        parser = StartupLog(expected_listeners(config))
        argv = [str(binary), "-c", str(self.config_path)]
        if self._die_with_parent:
            argv = _process.die_with_parent(argv)
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: OutputReader(parser, sink, loop),
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=child_env(),
                cwd=str(self._directory),
            )  # fmt: skip
        except FileNotFoundError as exc:
            sink.close()
            raise ServerBinaryNotFound(f"cannot run {binary}: {exc}") from exc
        except BaseException as exc:
            sink.close()
            if isinstance(exc, OSError):
                raise ServerError(f"cannot run {binary}: {exc}") from exc
            raise
        run = Run(transport, protocol, loop, transport.get_pid())
        self._run = run
        logger.debug("started nats-server pid %d with %s", run.pid, self.config_path)
        try:
            await wait_any({protocol.ready, protocol.exited}, self._startup_timeout)
        except BaseException:  # cancelled while waiting: no orphan
            self._run = None
            await end(run, signal.SIGKILL, DEFAULT_STOP_TIMEOUT)
            raise
        if protocol.exited.done() or not protocol.ready.done():
            timed_out = not protocol.exited.done()
            self._run = None
            await end(run, signal.SIGKILL, DEFAULT_STOP_TIMEOUT)  # also parses every last line
            if timed_out:
                raise ServerError(
                    f"not ready after {self._startup_timeout:g} s; last log lines: "
                    + (" | ".join(parser.tail) or "no output")
                )
            raise parser.failure(transport.get_returncode())
        self._ports = parser.ports()
        self.started_at = time.time()
        logger.info("nats-server pid %d ready at %s", run.pid, self.url)

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop gracefully: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Idempotent.

        Shielded from anyio cancellation (it is bounded by ``timeout`` plus a few seconds); if the task
        is cancelled anyway, the process is killed at once. Either way, on return or raise the process
        is gone or dying and the pipe and log file are closed. Ports stay pinned for a later start.
        """
        if self._portal is not None and self._run is not None and self._run.loop is not _running_loop():
            await anyio.to_thread.run_sync(self.stop_sync, timeout)
            return
        self._check_loop()
        run, self._run = self._run, None
        if run is None:
            return
        await end(run, signal.SIGTERM, timeout)
        self._remove_config()
        logger.debug("nats-server pid %d stopped (code %s)", run.pid, run.transport.get_returncode())

    async def kill(self) -> None:
        """SIGKILL the server (a crash, for tests) and wait until it is gone. Ports stay pinned."""
        self._check_loop()
        run, self._run = self._run, None
        if run is None:
            return
        await end(run, signal.SIGKILL, DEFAULT_STOP_TIMEOUT)
        self._remove_config()

    async def restart(self) -> None:
        """Stop (if running) and start again on the same ports."""
        await self.stop()
        await self.start()

    async def wait(self) -> int | None:
        """Wait until the process exits on its own (or is stopped); returns its exit code."""
        run = self._run
        if run is None:
            return None
        await asyncio.shield(run.protocol.exited)
        return run.transport.get_returncode()

    def state(self, *, bus: str | None = None) -> ServerState:
        """What this process publishes about the running server in the state file (this process
        manages it), for ``conat.connect()`` with no URL and ``conat status``/``down``.

        Raises:
            RuntimeError: the server is not running.
        """
        pid = self.pid
        if pid is None:
            raise RuntimeError("the nats-server is not running")
        return ServerState(
            url=self.url,
            pid=pid,
            started_at=self.started_at or time.time(),
            config_path=str(self.config_path),
            log_path=str(self.log_path),
            websocket_url=self.websocket_url,
            manager_pid=os.getpid(),
            bus=bus,
            monitor_url=self.monitor_url,
        )

    async def aclose(self) -> None:
        """Same as :meth:`stop`."""
        await self.stop()

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- synchronous use --------------------------------------------------------------------------

    def start_sync(self) -> None:
        """:meth:`start` from synchronous code: the server runs in a private event-loop thread.

        Stop it with :meth:`stop_sync` (or ``await stop()``, which delegates to it).
        """
        if self._portal is not None:
            raise RuntimeError("the nats-server is already running")
        cm = anyio.from_thread.start_blocking_portal("asyncio")
        portal = cm.__enter__()
        try:
            portal.call(self.start)
        except BaseException:
            cm.__exit__(*sys.exc_info())
            raise
        self._portal = (cm, portal)

    def stop_sync(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """:meth:`stop` a server started by :meth:`start_sync`, then end its event-loop thread."""
        if self._portal is None:
            return
        (cm, portal), self._portal = self._portal, None
        try:
            portal.call(self.stop, timeout)
        finally:
            cm.__exit__(None, None, None)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        run = getattr(self, "_run", None)
        if run is not None and run.transport.get_returncode() is None:
            _warn(f"unclosed {self!r}: killing nats-server pid {run.pid}", ResourceWarning, source=self)
            with contextlib.suppress(OSError):
                os.kill(run.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                run.close()

    def __repr__(self) -> str:
        state = "stopped" if not self.running else f"pid={self.pid}"
        if self._ports is not None:
            state += f" url={self.url}"
        return f"<NatsServer {state}>"


def _remove_stale_configs(directory: Path) -> None:
    """Remove config files left by servers of processes that are gone (killed before their stop)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = CONFIG_FILE_PATTERN.fullmatch(name)
        if m is not None and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                (directory / name).unlink()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def serve_forever(
    config: ServerConfig | None = None,
    *,
    state: bool = True,
    directory: str | os.PathLike[str] | None = None,
    on_ready: Callable[[NatsServer], object] | None = None,
) -> None:
    """Run a nats-server until SIGINT, SIGTERM, SIGHUP or cancellation, then stop it (``conat up``/``server``).

    A closed terminal (SIGHUP) stops it like Ctrl-C: the state file is removed and the server stopped.

    Args:
        config: server options.
        state: publish the server in the state file (so ``conat.connect()`` with no URL finds it)
            while it runs, and remove that file afterwards.
        directory: as for :class:`NatsServer`.
        on_ready: called with the running server once it is ready (and the state file written).

    Raises:
        ServerError: with ``state=True``, another live server is already published; or the
            nats-server exited on its own (see its log file); or any error of :meth:`NatsServer.start`.
    """
    if state and (existing := read_state()) is not None:
        raise ServerError(f"a conat nats-server is already running at {existing.url} (pid {existing.pid})")
    loop = asyncio.get_running_loop()
    stop_requested: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop_requested.done():
            stop_requested.set_result(None)

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, request_stop)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            continue
        installed.append(sig)
    try:
        async with NatsServer(config, directory=directory) as server:
            run = server._run
            assert run is not None
            if state:
                write_state(server.state())
            try:
                if on_ready is not None:
                    on_ready(server)
                await wait_any({stop_requested, run.protocol.exited}, None)
                if not stop_requested.done():
                    code = run.transport.get_returncode()
                    raise ServerError(f"exited unexpectedly with code {code}; see {server.log_path}")
                logger.info("stopping nats-server pid %d", run.pid)
            finally:
                if state:
                    clear_state(pid=run.pid)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
