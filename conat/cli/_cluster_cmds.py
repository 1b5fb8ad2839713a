"""Clusters from the shell: ``conat server --cluster/--route/--node/--config/--join`` and the topology
``conat status`` shows.

A plain cluster: run ``conat server --cluster NAME --node a`` on the first node, then
``conat server --cluster NAME --node b --route nats-route://<a's host>:<a's route port>`` on each
other (one reachable route is enough: nodes learn each other). A bus with auth on a cluster: the
first node is ``conat server --auth --cluster NAME --node a`` (the bus's authority: its directory,
its responder); ``conat auth join -o node.join`` writes what another node needs (0600: it holds the
bus's static passwords, no seed), and ``conat server --join node.join --node b`` runs that node.

Every node of a cluster (and a leaf) turns on its monitoring endpoint on a random loopback port and
publishes it in the state file: ``conat status`` reads the routes and leaf links there
(``/varz``, ``/routez``, ``/leafz``).
"""

from __future__ import annotations

import json
import tomllib
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import click

from conat import ServerError
from conat._paths import clear_state, data_dir, write_state
from conat._server_config import ClusterConfig, ServerConfig, server_config_from
from conat.auth import AuthNode, BusJoin

from ._app import stop_on_signals, until_stopped
from ._output import Printer

__all__ = ["JOIN_FILE", "cluster_config", "config_file", "serve_node", "topology", "topology_lines"]

JOIN_FILE: Final = "join.json"
"""A clustered bus with auth writes its join file here, in its bus directory."""
MONITOR_TIMEOUT: Final = 2.0


def config_file(path: Path) -> ServerConfig:
    """Server options from a TOML file (:func:`conat._server_config.server_config_from`)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
        return server_config_from(data)
    except OSError as e:
        raise click.UsageError(f"--config {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, ValueError) as e:
        raise click.UsageError(f"--config {path}: {e}") from None


def cluster_config(
    config: ServerConfig, name: str | None, port: int, routes: tuple[str, ...], node: str | None
) -> ServerConfig:
    """``config`` with the cluster of the flags (if ``name``), the node name, and monitoring on
    for a node of a cluster or a leaf (``conat status`` reads the topology there)."""
    try:
        if name is not None:
            config = replace(config, cluster=ClusterConfig(name, host=config.host, port=port, routes=routes))
        elif routes:
            raise click.UsageError("--route goes with --cluster (or a --config file's cluster)")
        if node is not None:
            config = replace(config, server_name=node)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if config.monitor_port is None and (config.cluster is not None or config.leafnodes is not None):
        config = replace(config, monitor_port=0)
    return config


async def serve_node(join: BusJoin, node: str, config: ServerConfig, out: Printer) -> None:
    """Run a node of a bus with auth from its join file until SIGINT, SIGTERM or SIGHUP, publishing
    it (and its bus: clients need tokens) in the state file meanwhile.

    Raises:
        ServerError: the nats-server exited on its own.
    """
    directory = data_dir() / "nodes" / join.bus
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if config.monitor_port is None:
        config = replace(config, monitor_port=0)
    with stop_on_signals() as stop:
        async with await AuthNode.start(join, node=node, directory=directory, config=config) as started:
            server = started.server
            pid = server.pid
            assert pid is not None
            write_state(server.state(bus=join.bus))
            try:
                out.event(
                    f"conat server ready at {server.url} (nats-server pid {pid}): node"
                    f" {server.config.server_name} of bus {join.bus}, cluster {join.cluster}"
                    f"\n  routes:    {server.cluster_url}\n  log:       {server.log_path}\nPress Ctrl-C to stop.",
                    event="ready",
                    url=server.url,
                    pid=pid,
                    bus=join.bus,
                    node=server.config.server_name,
                    cluster=join.cluster,
                    cluster_url=server.cluster_url,
                    log_path=str(server.log_path),
                )
                code = await until_stopped(stop, server.wait())
                if not stop.is_set():
                    raise ServerError(f"exited unexpectedly with code {code}; see {server.log_path}")
            finally:
                clear_state(pid=pid)


def _get(monitor_url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{monitor_url}{path}", timeout=MONITOR_TIMEOUT) as response:
        body = json.load(response)
    return body if isinstance(body, dict) else {}


def topology(monitor_url: str) -> dict[str, Any]:
    """The server's place in its cluster and its leaf links, from its monitoring endpoint:
    ``{"node", "cluster", "routes": [{"node", "address"}], "leafnodes": [{"node", "account",
    "address"}]}`` (``{"error": ...}`` when the endpoint does not answer)."""
    try:
        varz = _get(monitor_url, "/varz")
        routez = _get(monitor_url, "/routez")
        leafz = _get(monitor_url, "/leafz")
    except (OSError, urllib.error.URLError, ValueError) as e:
        return {"error": f"{monitor_url}: {e}"}
    cluster = varz.get("cluster") or {}
    peers: dict[str, str] = {}
    for route in routez.get("routes") or []:  # a pool would list a peer more than once
        peers.setdefault(
            str(route.get("remote_name") or route.get("remote_id", "?")),
            f"{route.get('ip')}:{route.get('port')}",
        )
    return {
        "node": varz.get("server_name", ""),
        "cluster": cluster.get("name") or None,
        "routes": [{"node": name, "address": address} for name, address in sorted(peers.items())],
        "leafnodes": [
            {
                "node": str(leaf.get("name", "")),
                "account": str(leaf.get("account", "")),
                "address": f"{leaf.get('ip')}:{leaf.get('port')}",
            }
            for leaf in leafz.get("leafs") or []
        ],
    }


def topology_lines(topo: dict[str, Any]) -> list[str]:
    """``conat status``'s lines for :func:`topology`."""
    if "error" in topo:
        return [f"  topology:  unknown (monitoring endpoint: {topo['error']})"]
    lines = []
    if topo["cluster"]:
        routes = ", ".join(f"{r['node']} ({r['address']})" for r in topo["routes"]) or "none yet"
        lines.append(
            f"  cluster:   {topo['cluster']}, node {topo['node']}; routes to {len(topo['routes'])}: {routes}"
        )
    leafs = topo["leafnodes"]
    if leafs:
        shown = ", ".join(
            f"{leaf['node'] or '?'} ({leaf['address']}, account {leaf['account']})" for leaf in leafs
        )
        lines.append(f"  leaf links: {len(leafs)}: {shown}")
    return lines
