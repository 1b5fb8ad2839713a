"""A nats-server in a network namespace of its own, reached over a veth pair: the link can go down.

The namespace (``/run/netns/conat-fault-<id>``) holds one end of a veth pair (``10.253.<n>.2/30``),
the test's namespace the other (``10.253.<n>.1/30``). Everything is done with iproute2's ``ip``
(a fork and exec): pyroute2's ``netns.create`` forks inside a threaded process, and its synchronous
API runs an event loop of its own, which cannot run inside the test's. The server runs in
the namespace (``nsenter --net``) and listens on its end only, so every client of the test reaches
it through the pair. :meth:`PartitionedServer.partition` sets the test's end down: nothing crosses
either way, no packet is refused (a real partition, not a reset), until :meth:`heal`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

from conat import NatsServer, ServerConfig
from conat._server_process import find_binary


class PartitionedServer:
    """Use ``async with PartitionedServer(directory) as server:``; ``server.url`` crosses the link."""

    def __init__(self, directory: Path, config: ServerConfig | None = None) -> None:
        self.id = secrets.token_hex(3)
        self.name = f"conat-fault-{self.id}"
        self.outside = f"cfo{self.id}"
        self.inside = f"cfi{self.id}"
        subnet = int(self.id, 16) % 250 + 1
        self.outside_ip, self.inside_ip = f"10.253.{subnet}.1", f"10.253.{subnet}.2"
        self.directory = directory
        self._config = config or ServerConfig()
        self.server: NatsServer | None = None

    def _wrapper(self) -> Path:
        """The nats-server binary, run inside the namespace (``nsenter`` execs it: same pid)."""
        script = self.directory / "nats-server-in-netns"
        self.directory.mkdir(parents=True, exist_ok=True)
        script.write_text(f'#!/bin/sh\nexec nsenter --net=/run/netns/{self.name} {find_binary()} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return script

    def _link(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        _ip("addr", "add", f"{self.outside_ip}/30", "dev", self.outside)
        _ip("link", "set", self.inside, "netns", self.name)
        _ip("-n", self.name, "addr", "add", f"{self.inside_ip}/30", "dev", self.inside)
        _ip("-n", self.name, "link", "set", self.inside, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        self.heal()

    def _set(self, state: str) -> None:
        _ip("link", "set", self.outside, state)

    def partition(self) -> None:
        """The link goes down: nothing crosses, nothing is refused."""
        self._set("down")

    def heal(self) -> None:
        self._set("up")

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def __aenter__(self) -> Self:
        self._link()
        try:
            config = ServerConfig(
                host=self.inside_ip,
                allow_remote=True,
                server_name=self._config.server_name,
                ping_interval=self._config.ping_interval,
                ping_max=self._config.ping_max,
            )
            self.server = NatsServer(config, directory=self.directory / "server", binary=self._wrapper())
            await self.server.start()
        except BaseException:
            self._remove()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.server is not None:
                await self.server.stop()
        finally:
            self._remove()

    def _remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.outside)  # its peer goes with it
        if os.path.exists(f"/run/netns/{self.name}"):
            _ip("netns", "del", self.name)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)
