"""Reading nats-server's log: the sans-IO half of :mod:`conat._server`.

:class:`StartupLog` turns the bytes nats-server writes into a readiness decision, the ports it
actually bound, and the error its first fatal line stands for. No I/O, so it is tested on text.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal, final

from ._errors import PortInUse, ServerConfigRejected, ServerError
from ._server_config import ServerConfig

__all__ = ["Listener", "ServerPorts", "StartupLog", "classify_fatal", "expected_listeners"]

Listener = Literal["client", "websocket", "cluster", "leafnodes", "monitor"]

_LEVEL_RE: Final = re.compile(r"\[(INF|WRN|ERR|FTL|DBG|TRC)\] (.*)$")
_LISTEN_RE: Final[tuple[tuple[Listener, re.Pattern[str]], ...]] = (
    ("client", re.compile(r"^Listening for client connections on (\S+)$")),
    ("websocket", re.compile(r"^Listening for websocket clients on (?:wss?://)?(\S+)$")),
    ("cluster", re.compile(r"^Listening for route connections on (\S+)$")),
    ("leafnodes", re.compile(r"^Listening for leafnode connections on (\S+)$")),
    ("monitor", re.compile(r"^Starting https? monitor on (\S+)$")),
)
_MAX_LINE: Final = 64 * 1024


@final
@dataclass(frozen=True, slots=True)
class ServerPorts:
    """The ports a running server actually listens on (``None``: that listener is not configured)."""

    client: int
    websocket: int | None = None
    cluster: int | None = None
    leafnodes: int | None = None
    monitor: int | None = None


def expected_listeners(config: ServerConfig) -> frozenset[Listener]:
    """The listeners whose "listening" lines must appear before ``config``'s server counts as ready."""
    wanted: set[Listener] = {"client"}
    if config.websocket is not None:
        wanted.add("websocket")
    if config.cluster is not None:
        wanted.add("cluster")
    if config.leafnodes is not None and config.leafnodes.listen_port is not None:
        wanted.add("leafnodes")
    if config.monitor_port is not None:
        wanted.add("monitor")
    return frozenset(wanted)


def classify_fatal(line: str) -> ServerError | None:
    """The error a fatal nats-server log line stands for, or ``None`` if the line is not fatal."""
    if line.startswith("nats-server: "):
        detail = line.removeprefix("nats-server: ")
    elif (m := _LEVEL_RE.search(line)) is not None and m.group(1) == "FTL":
        detail = m.group(2)
    else:
        return None
    if "address already in use" in detail.lower():
        return PortInUse(detail)
    return ServerConfigRejected(detail)


@final
class StartupLog:
    """Sans-IO reader of nats-server's log: bytes in, readiness, ports and fatal errors out."""

    def __init__(self, expect: frozenset[Listener] = frozenset({"client"})) -> None:
        self._expect = expect
        self._ports: dict[Listener, int] = {}
        self._buf = bytearray()
        self._saw_ready = False
        self.fatal: ServerError | None = None
        """The first fatal line's error, if any."""
        self.tail: deque[str] = deque(maxlen=20)
        """The last lines, for error messages."""

    @property
    def ready(self) -> bool:
        """Whether "Server is ready" was logged and every expected listener's port is known."""
        return self._saw_ready and self.fatal is None and self._expect.issubset(self._ports)

    def feed(self, data: bytes) -> list[str]:
        """Consume a chunk of output; returns the complete lines it finished (without newlines)."""
        self._buf += data
        *complete, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest[-_MAX_LINE:])  # a runaway line cannot grow memory without bound
        lines = [raw.decode(errors="replace").rstrip("\r") for raw in complete]
        for line in lines:
            self._line(line)
        return lines

    def _line(self, line: str) -> None:
        if not line:
            return
        self.tail.append(line)
        if self.fatal is None and (fatal := classify_fatal(line)) is not None:
            self.fatal = fatal
            return
        m = _LEVEL_RE.search(line)
        if m is None:
            return
        message = m.group(2)
        if message == "Server is ready":
            self._saw_ready = True
            return
        for listener, pattern in _LISTEN_RE:
            if (lm := pattern.match(message)) is not None:
                port = lm.group(1).rsplit(":", 1)[-1]
                if port.isdigit():
                    self._ports[listener] = int(port)
                return

    def ports(self) -> ServerPorts:
        """The ports learned so far. Raises ``RuntimeError`` if the client port is not known yet."""
        if "client" not in self._ports:
            raise RuntimeError("the client port is not known yet")
        p = self._ports
        return ServerPorts(
            p["client"], p.get("websocket"), p.get("cluster"), p.get("leafnodes"), p.get("monitor")
        )

    def failure(self, returncode: int | None) -> ServerError:
        """The error to raise for a server that exited (with ``returncode``) before it was ready."""
        if self.fatal is not None:
            return self.fatal
        tail = " | ".join(self.tail) or "no output"
        return ServerError(f"exited with code {returncode} before it was ready; last log lines: {tail}")
