"""ServerConfig validation and the nats-server config renderer (pure), plus acceptance by nats-server -t."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from conat._server import find_binary
from conat._server_config import (
    DEFAULT_MAX_PAYLOAD,
    MAX_PAYLOAD_LIMIT,
    MIN_MAX_PAYLOAD,
    ClusterConfig,
    LeafNodeConfig,
    ServerConfig,
    WebsocketConfig,
    config_tree,
    dumps_conf,
    is_loopback,
    quote,
    render,
)

# -- validation -------------------------------------------------------------------------------------


def test_defaults_are_loopback_random_port_and_nats_default_payload() -> None:
    config = ServerConfig()
    assert (config.host, config.port, config.max_payload) == ("127.0.0.1", 0, DEFAULT_MAX_PAYLOAD)
    assert DEFAULT_MAX_PAYLOAD == 1024 * 1024
    assert config.monitor_port is None and config.websocket is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"host": "0.0.0.0"}, "host"),
        ({"host": "192.0.2.1"}, "host"),
        ({"host": ""}, "host"),
        ({"port": -1}, "port"),
        ({"port": 65536}, "port"),
        ({"port": True}, "port"),
        ({"max_payload": 0}, "max_payload"),
        ({"max_payload": MIN_MAX_PAYLOAD - 1}, "max_payload"),
        ({"max_payload": MAX_PAYLOAD_LIMIT + 1}, "max_payload"),
        ({"server_name": "has space"}, "server_name"),
        ({"server_name": ""}, "server_name"),
        ({"monitor_port": 70000}, "monitor_port"),
        ({"ping_interval": 0}, "ping_interval"),
        ({"ping_interval": float("nan")}, "ping_interval"),
        ({"ping_max": 0}, "ping_max"),
        ({"websocket": WebsocketConfig(host="0.0.0.0")}, "websocket.host"),
        ({"cluster": ClusterConfig("c", host="10.0.0.1")}, "cluster.host"),
        ({"leafnodes": LeafNodeConfig(listen_host="::", listen_port=0)}, "leafnodes.listen_host"),
        ({"extra_blocks": ["not", "a", "mapping"]}, "extra_blocks"),
    ],
)
def test_invalid_option_raises_value_error_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        ServerConfig(**kwargs)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: WebsocketConfig(port=-5), "websocket.port"),
        (lambda: ClusterConfig(""), "cluster.name"),
        (lambda: ClusterConfig("c", routes=["127.0.0.1:1234"]), "cluster.routes"),
        (lambda: LeafNodeConfig(), "leafnodes"),
        (lambda: LeafNodeConfig(remotes=["http://hub:7422"]), "leafnodes.remotes"),
        (lambda: LeafNodeConfig(listen_port=99999), "leafnodes.listen_port"),
    ],
)
def test_invalid_block_raises_value_error_naming_the_field(build: Any, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        build()


def test_remote_hosts_need_allow_remote() -> None:
    config = ServerConfig(host="0.0.0.0", allow_remote=True, websocket=WebsocketConfig(host="0.0.0.0"))
    assert config.host == "0.0.0.0"


def test_max_payload_accepts_nats_hard_limit() -> None:
    assert ServerConfig(max_payload=MAX_PAYLOAD_LIMIT).max_payload == 64 * 1024 * 1024


def test_max_payload_below_what_conat_needs_is_refused_clearly() -> None:
    # Regression: max_payload=2048 validated, then nothing could be published ("message headers").
    with pytest.raises(ValueError, match=r"^max_payload: .*16384.*conat needs") as e:
        ServerConfig(max_payload=2048)
    assert "2048" in str(e.value)
    assert ServerConfig(max_payload=MIN_MAX_PAYLOAD).max_payload == 16 * 1024


def test_route_and_remote_lists_become_tuples_and_a_lone_url_is_one_url() -> None:
    cluster = ClusterConfig("c", routes=["nats-route://127.0.0.1:1"])
    leaf = LeafNodeConfig(remotes="nats-leaf://127.0.0.1:2")
    assert cluster.routes == ("nats-route://127.0.0.1:1",)
    assert leaf.remotes == ("nats-leaf://127.0.0.1:2",)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("example.com", False), ("10.0.0.1", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- rendering --------------------------------------------------------------------------------------


def test_default_tree_uses_random_port_and_has_no_monitor() -> None:
    tree = config_tree(ServerConfig())
    assert tree == {"host": "127.0.0.1", "port": -1, "max_payload": 1048576}
    assert "http" not in tree


def test_render_default_text() -> None:
    text = render(ServerConfig())
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ['host: "127.0.0.1"', "port: -1", "max_payload: 1048576"]


def test_fixed_port_name_pings_debug_log_and_pid_file() -> None:
    config = ServerConfig(port=4333, server_name="n1", ping_interval=2.5, ping_max=3, debug=True)
    tree = config_tree(config, log_file="/x/log", pid_file="/x/pid")
    assert tree["port"] == 4333
    assert tree["server_name"] == "n1"
    assert tree["ping_interval"] == "2500ms"
    assert tree["ping_max"] == 3
    assert tree["debug"] is True
    assert tree["log_file"] == "/x/log" and tree["logtime"] is True
    assert tree["pid_file"] == "/x/pid"


def test_monitor_binds_loopback_even_when_clients_may_be_remote() -> None:
    assert config_tree(ServerConfig(monitor_port=8222))["http"] == "127.0.0.1:8222"
    remote = ServerConfig(host="0.0.0.0", allow_remote=True, monitor_port=0)
    assert config_tree(remote)["http"] == "127.0.0.1:-1"


def test_websocket_block() -> None:
    tree = config_tree(ServerConfig(websocket=WebsocketConfig()))
    assert tree["websocket"] == {"host": "127.0.0.1", "port": -1, "no_tls": True}
    fixed = config_tree(ServerConfig(websocket=WebsocketConfig(port=8443, no_tls=False)))
    assert fixed["websocket"] == {"host": "127.0.0.1", "port": 8443, "no_tls": False}


def test_cluster_block() -> None:
    routes = ["nats-route://127.0.0.1:6222", "nats-route://127.0.0.1:6223"]
    tree = config_tree(ServerConfig(cluster=ClusterConfig("c1", port=6222, routes=routes)))
    assert tree["cluster"] == {
        "name": "c1",
        "host": "127.0.0.1",
        "port": 6222,
        "routes": routes,
        "pool_size": -1,  # one ordered route per pair of nodes: interest is confirmable cluster-wide
    }


def test_leafnode_blocks() -> None:
    hub = config_tree(ServerConfig(leafnodes=LeafNodeConfig(listen_port=0)))
    assert hub["leafnodes"] == {"host": "127.0.0.1", "port": -1}
    leaf = config_tree(ServerConfig(leafnodes=LeafNodeConfig(remotes=["nats-leaf://u:p@127.0.0.1:7422"])))
    assert leaf["leafnodes"] == {"remotes": [{"urls": ["nats-leaf://u:p@127.0.0.1:7422"]}]}
    # several URLs are one hub's nodes: one link that fails over, not one link (and copy) per URL
    urls = ["nats-leaf://127.0.0.1:7422", "nats-leaf://127.0.0.1:7423", "nats-leaf://127.0.0.1:7424"]
    three = config_tree(ServerConfig(leafnodes=LeafNodeConfig(remotes=urls)))
    assert three["leafnodes"] == {"remotes": [{"urls": urls}]}


def test_extra_blocks_deep_merge_add_override_and_delete() -> None:
    extra = {
        "accounts": {"AUTH": {"users": [{"user": "auth", "password": "pw"}]}, "APP": {}},
        "system_account": "SYS",
        "authorization": {"timeout": 2, "auth_callout": {"issuer": "A" * 56, "auth_users": ["auth"]}},
        "websocket": {"token_cookie": "nats_token", "port": 9000},
        "max_payload": None,
    }
    tree = config_tree(ServerConfig(websocket=WebsocketConfig(), extra_blocks=extra))
    assert tree["websocket"] == {
        "host": "127.0.0.1",
        "port": 9000,
        "no_tls": True,
        "token_cookie": "nats_token",
    }
    assert tree["system_account"] == "SYS"
    assert tree["authorization"]["auth_callout"]["auth_users"] == ["auth"]
    assert tree["accounts"]["APP"] == {}
    assert "max_payload" not in tree


def test_extra_blocks_are_not_mutated_by_rendering() -> None:
    extra = {"websocket": {"token_cookie": "t"}}
    config_tree(ServerConfig(websocket=WebsocketConfig(), extra_blocks=extra))
    assert extra == {"websocket": {"token_cookie": "t"}}


def test_extra_blocks_are_a_read_only_copy() -> None:
    extra: dict[str, Any] = {"system_account": "SYS"}
    config = ServerConfig(extra_blocks=extra)
    extra["system_account"] = "OTHER"
    assert config.extra_blocks == {"system_account": "SYS"}
    with pytest.raises(TypeError):
        config.extra_blocks["x"] = 1  # type: ignore[index]


def test_dumps_conf_shapes() -> None:
    text = dumps_conf(
        {"a": 1, "b": True, "c": "x", "d": [1, "y"], "e": {"f": {}}, "g": [], "h": None, "$SYS": 1.5}
    )
    body = text.split("\n", 1)[1]
    assert body == ('a: 1\nb: true\nc: "x"\nd: [\n  1\n  "y"\n]\ne: {\n  f: {}\n}\ng: []\n"$SYS": 1.5\n')


@pytest.mark.parametrize("bad", [{"a": object()}, {"a": float("inf")}, {1: 2}, {"": 1}])
def test_dumps_conf_rejects_what_it_cannot_write(bad: dict[Any, Any]) -> None:
    with pytest.raises(TypeError):
        dumps_conf(bad)


@pytest.mark.parametrize(
    ("raw", "quoted"),
    [
        ("plain", '"plain"'),
        ('a"b', r'"a\"b"'),
        ("a\\b", r'"a\\b"'),
        ("line\nnext\ttab\rcr", r'"line\nnext\ttab\rcr"'),
        ("bell\x07del\x7f", r'"bell\x07del\x7f"'),
        ("$VAR #c {x} é😀", '"$VAR #c {x} é😀"'),
    ],
)
def test_quote_uses_only_escapes_nats_understands(raw: str, quoted: str) -> None:
    assert quote(raw) == quoted
    assert "\\u" not in quote(raw)


# -- the real parser agrees -------------------------------------------------------------------------

ACCEPTED = {
    "default": ServerConfig(),
    "everything": ServerConfig(
        port=4999,
        server_name="n-1",
        max_payload=MAX_PAYLOAD_LIMIT,
        monitor_port=0,
        ping_interval=30,
        ping_max=3,
        debug=True,
        websocket=WebsocketConfig(),
        cluster=ClusterConfig("c1", routes=["nats-route://127.0.0.1:6222"]),
        leafnodes=LeafNodeConfig(listen_port=0, remotes=["nats-leaf://u:p@127.0.0.1:7422"]),
    ),
    "tricky strings": ServerConfig(server_name='a"b\\c$d#e{f}é\x01'),
    "auth shaped extra blocks": ServerConfig(
        extra_blocks={
            "accounts": {
                "AUTH": {"users": [{"user": "auth", "password": "authpw"}]},
                "APP": {},
                "SYS": {"users": [{"user": "sys", "password": "syspw"}]},
            },
            "system_account": "SYS",
        }
    ),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_nats_server_accepts_rendered_config(name: str, tmp_path: Path) -> None:
    path = tmp_path / "nats.conf"
    path.write_text(render(ACCEPTED[name], log_file=str(tmp_path / "log"), pid_file=str(tmp_path / "pid")))
    result = subprocess.run(
        [str(find_binary()), "-t", "-c", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr
