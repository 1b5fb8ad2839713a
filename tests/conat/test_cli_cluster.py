"""Clusters from the shell, with real processes: ``conat server --cluster/--route/--node``,
``--config FILE``, a bus with auth on two nodes (``--auth --cluster``, ``conat auth join``,
``--join``), and ``conat status`` showing the routes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import conat
from conat.auth import Keyring, TokenIssuer
from subjects import MASTER_BUS, Scope

from .cli_support import Proc, invoke, json_lines, procs

__all__ = ["procs"]  # a fixture: imported to be found, used by name


def _env(data: Path) -> dict[str, str]:
    return {"CONAT_DATA_DIR": str(data)}


def _start(data: Path, procs: list[Proc], *args: str) -> dict[str, Any]:
    data.mkdir(parents=True, exist_ok=True)
    proc = Proc(["--json", "server", *args], _env(data))
    procs.append(proc)
    ready: dict[str, Any] = json.loads(proc.expect("stdout", '"event":"ready"'))
    return ready


def _status(data: Path) -> dict[str, Any]:
    result = invoke(["--json", "status"], env=_env(data))
    assert result.exit_code == 0, result.output
    [info] = json_lines(result.stdout)
    return info


def _routes_of(data: Path, count: int, timeout: float = 15.0) -> dict[str, Any]:
    """``conat status`` once it shows ``count`` routes (routes form a moment after start)."""
    deadline = time.monotonic() + timeout
    while True:
        info = _status(data)
        if len(info["topology"]["routes"]) >= count or time.monotonic() > deadline:
            return info
        time.sleep(0.1)


async def _one_way(a: str, b: str, **options: Any) -> bytes:
    async with await conat.connect(a, **options) as on_a, await conat.connect(b, **options) as on_b:
        sub = await on_a.subscribe("public.cli.cluster", cluster_wide=True)
        await on_b.publish("public.cli.cluster", b"across", encoding="raw")
        msg = await asyncio.wait_for(anext(aiter(sub)), 10)
        return msg.raw


def test_two_nodes_with_flags_and_status_shows_the_routes(tmp_path: Path, procs: list[Proc]) -> None:
    a = _start(tmp_path / "a", procs, "--cluster", "c1", "--node", "a")
    assert a["cluster_url"].startswith("nats-route://127.0.0.1:")
    b = _start(tmp_path / "b", procs, "--cluster", "c1", "--node", "b", "--route", a["cluster_url"])
    info = _routes_of(tmp_path / "a", 1)
    assert info["topology"]["cluster"] == "c1" and info["topology"]["node"] == "a"
    assert [r["node"] for r in info["topology"]["routes"]] == ["b"]
    human = invoke(["status"], env=_env(tmp_path / "b"))
    assert "  cluster:   c1, node b; routes to 1: a (127.0.0.1:" in human.stdout, human.stdout
    assert asyncio.run(_one_way(a["url"], b["url"])) == b"across"


def test_a_config_file_instead_of_the_flags(tmp_path: Path, procs: list[Proc]) -> None:
    config = tmp_path / "node.toml"
    config.write_text('server_name = "solo"\n[cluster]\nname = "c2"\n')
    ready = _start(tmp_path / "d", procs, "--config", str(config))
    assert ready["cluster_url"]
    assert _status(tmp_path / "d")["topology"]["cluster"] == "c2"
    both = invoke(["server", "--config", str(config), "--port", "4999"], env=_env(tmp_path / "e"))
    assert both.exit_code == 1 and "drop --port" in both.stderr
    config.write_text("[cluster]\nnom = 1\n")
    bad = invoke(["server", "--config", str(config)], env=_env(tmp_path / "e"))
    assert bad.exit_code == 1 and "cluster.nom: not a field" in bad.stderr


def test_a_bus_with_auth_on_two_nodes(tmp_path: Path, procs: list[Proc]) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    assert invoke(["auth", "keygen"], env=_env(first)).exit_code == 0
    a = _start(first, procs, "--auth", "--cluster", "c3", "--node", "a")
    join = tmp_path / "node.join"
    made = invoke(["--json", "auth", "join", "-o", str(join)], env=_env(first))
    assert made.exit_code == 0, made.output
    assert (join.stat().st_mode & 0o777) == 0o600
    assert json_lines(made.stdout)[0]["routes"] == [a["cluster_url"]]
    b = _start(second, procs, "--join", str(join), "--node", "b")
    assert b["bus"] == MASTER_BUS and b["node"] == "conat-master.b"
    info = _routes_of(second, 1)
    assert info["bus"] == MASTER_BUS
    assert [r["node"] for r in info["topology"]["routes"]] == ["conat-master.a"]
    token = TokenIssuer(Keyring.open(first / "keys")).issue("hub", MASTER_BUS, Scope(), 300)
    assert asyncio.run(_one_way(a["url"], b["url"], credentials=token)) == b"across"
    no_cluster = invoke(["auth", "join", "-o", str(tmp_path / "x")], env=_env(tmp_path / "none"))
    assert no_cluster.exit_code == 1 and "no running bus with auth" in no_cluster.stderr
