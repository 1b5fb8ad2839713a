"""A cluster of nats-servers on one machine (loopback): for tests, benchmarks and fault injection.

:class:`LocalCluster` starts ``n`` servers, each seeded with the route of the first, and returns once
the mesh is complete: every server answers a cluster-wide probe from a client of the first
(:mod:`conat._interest`). Nodes can be killed (``kill -9``), stopped and restarted on their own
ports, so clients that know the URLs of every node fail over and come back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Self, final

from ._connect import connect
from ._server import NatsServer
from ._server_config import ClusterConfig, ServerConfig

__all__ = ["LocalCluster"]


@final
class LocalCluster:
    """``n`` nats-servers forming one cluster on loopback. Use ``async with LocalCluster(...)``.

    Args:
        directory: each node's files go in ``directory/<node name>``.
        size: the number of nodes.
        name: the cluster name.
        config: the base config of every node (its ``server_name`` and ``cluster`` are replaced).
        node_config: called with a node's index and its config, returns the config to use (to give
            one node a leaf listener, a monitor port...).
        server_name: the server name of node ``i`` (default ``n<i>``).
    """

    def __init__(
        self,
        directory: Path,
        size: int = 3,
        *,
        name: str = "conat",
        config: ServerConfig | None = None,
        node_config: Callable[[int, ServerConfig], ServerConfig] | None = None,
        server_name: Callable[[int], str] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"size: must be at least 1, got {size!r}")
        self.directory = directory
        self.size = size
        self.name = name
        self._base = config or ServerConfig()
        self._node_config = node_config
        self._server_name = server_name or (lambda i: f"n{i}")
        self.nodes: list[NatsServer] = []

    @property
    def urls(self) -> list[str]:
        """The client URL of every node (give all of them to clients: they fail over)."""
        return [node.url for node in self.nodes]

    def _config(self, index: int, routes: tuple[str, ...]) -> ServerConfig:
        config = replace(
            self._base,
            server_name=self._server_name(index),
            cluster=ClusterConfig(self.name, routes=routes),
        )
        return self._node_config(index, config) if self._node_config is not None else config

    async def start(self, timeout: float = 15.0) -> Self:
        """Start every node and wait until the mesh is complete (each node knows every other).

        Raises:
            ServerError: a node did not start; the nodes already started are stopped.
            TimeoutError: the mesh did not form within ``timeout`` seconds.
        """
        try:
            first = NatsServer(self._config(0, ()), directory=self.directory / self._server_name(0))
            self.nodes.append(first)
            await first.start()
            assert first.cluster_url is not None
            seed = (first.cluster_url,)
            for i in range(1, self.size):
                node = NatsServer(self._config(i, seed), directory=self.directory / self._server_name(i))
                self.nodes.append(node)
                await node.start()
            await self.wait_meshed(timeout)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def wait_meshed(self, timeout: float = 15.0, *, url: str | None = None, **options: object) -> None:
        """Wait until every running node answers a probe sent through the first running one (or
        ``url``, with connect ``options`` such as credentials).

        Raises:
            ConatError: the mesh did not form within ``timeout`` seconds (the last probe's error).
        """
        running = sum(node.running for node in self.nodes)
        target = url or next(node.url for node in self.nodes if node.running)
        client = await connect(target, name="conat-local-cluster", **options)  # type: ignore[arg-type]
        async with client:
            await client.cluster_servers(timeout, at_least=running)

    async def kill(self, index: int) -> None:
        """``kill -9`` node ``index`` (its ports stay reserved for :meth:`restart`)."""
        await self.nodes[index].kill()

    async def restart(self, index: int) -> None:
        """Start node ``index`` again, on its own ports."""
        await self.nodes[index].start()

    async def aclose(self) -> None:
        for node in reversed(self.nodes):
            await node.stop()

    async def __aenter__(self) -> Self:
        if not self.nodes:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
