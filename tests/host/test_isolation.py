"""Isolation of a project on a real host: the network namespace reaches only the bus, the mount
view shows only the project's home, and ``status`` says exactly what is missing where the host
cannot isolate. Each check skips, with the host's own reason, where the mechanism is unavailable."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from host import HostConfig, HostContext, HostError, HostServer, exec_command
from host._isolation import probe
from host._netns import BUS_PORT_INSIDE, _listen_inside, create_netns, remove_netns

from .conftest import Host, make_config, searchable_tmp, start_host, stop_host

pytestmark = pytest.mark.anyio

CONNECT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=3)
    print("open", s.recv(4).decode(errors="replace"))
except OSError as e:
    print("closed", type(e).__name__)
"""


async def _probe_port(host: Host, project: str, address: str, port: int) -> str:
    result = await exec_command(
        host.client, project, ["python3", "-c", CONNECT, address, str(port)], timeout=20
    )
    return result.stdout.decode().strip()


@pytest.fixture(scope="module")
async def project(host: Host) -> AsyncIterator[str]:
    started = await host.new_project()
    yield started
    await host.runner.stop(started, wait=30)


async def test_inside_the_namespace_only_the_bus_answers(host: Host, project: str) -> None:
    status = await host.runner.status(project)
    if "netns" not in status.isolation.applied:
        pytest.skip(f"no network namespace here: {status.isolation.missing.get('netns')}")
    other = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    other_port = other.sockets[0].getsockname()[1]
    bus_port = int(host.server.url.rsplit(":", 1)[1])
    try:
        assert await _probe_port(host, project, "127.0.0.1", BUS_PORT_INSIDE) == "open INFO"
        assert (await _probe_port(host, project, "127.0.0.1", other_port)).startswith("closed")
        assert (await _probe_port(host, project, "127.0.0.1", bus_port)).startswith("closed")
        assert (await _probe_port(host, project, "10.0.0.1", 80)).startswith("closed")  # no route out
    finally:
        other.close()


async def test_the_mount_view_shows_only_the_home(host: Host, project: str) -> None:
    other = await host.new_project(start=False)
    status = await host.runner.status(project)
    data = host.server.config.data
    other_home = host.server.config.projects / other
    (other_home / "secret").write_text("not yours")
    listing = await exec_command(
        host.client,
        project,
        ["sh", "-c", f"ls {data}/bus; cat {other_home}/secret; echo mine > mine; cat mine"],
    )
    assert b"not yours" not in listing.stdout and listing.stdout.endswith(b"mine\n")
    assert b"secrets" not in listing.stdout
    if "mountns" in status.isolation.applied:
        assert b"No such file" in listing.stderr
        ps = await exec_command(host.client, project, ["sh", "-c", "ls /proc | grep -c '^[0-9]'"])
        assert int(ps.stdout) < 20  # its own pid namespace: not the host's processes
    elif "uid" in status.isolation.applied:
        assert b"Permission denied" in listing.stderr
    else:
        pytest.skip(f"neither a mount view nor a uid here: {status.isolation.missing}")


async def test_status_names_what_is_missing_and_why() -> None:
    """A host told not to use namespaces and cgroups still runs projects, and says so."""
    with searchable_tmp("bare") as tmp:
        bare = await start_host(
            tmp, netns=False, mountns=False, cgroups=False, stop_projects_on_shutdown=True
        )
        try:
            project = await bare.new_project()
            status = await bare.runner.status(project)
            missing = status.isolation.missing
            assert missing["netns"] == missing["mountns"] == "disabled in the host config"
            assert missing["cgroup-memory"] == "disabled in the host config"
            assert {"env", "rlimits"} <= set(status.isolation.applied)
            assert "netns" not in status.isolation.applied
            reply = await bare.client.request(
                f"project.{project}.status", {"name": "project.status"}, timeout=10
            )
            assert reply.data["isolation"]["missing"]["netns"] == "disabled in the host config"
            assert (await exec_command(bare.client, project, ["true"])).code == 0
        finally:
            await stop_host(bare)


async def test_a_second_host_on_the_same_data_dir_is_refused(host: Host) -> None:
    second = HostServer(host.server.config)
    with pytest.raises(HostError, match="another host runs on"):
        await second.start()
    assert (await host.runner.list()) is not None  # the first one is untouched


def test_namespaces_are_made_without_forking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: pyroute2's ``netns.create`` forks a child, which hung a threaded host (a lock
    held by another thread at fork time); the host makes and configures namespaces in a thread."""
    if not probe().netns:
        pytest.skip(f"no network namespaces here: {probe().missing.get('netns')}")

    def no_fork() -> int:
        raise AssertionError("forked while making a network namespace")

    name = f"conat-test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(os, "fork", no_fork)
    try:
        create_netns(name)
        relay_socket = _listen_inside(name, BUS_PORT_INSIDE)
        relay_socket.close()
    finally:
        monkeypatch.undo()
        remove_netns(name)
    assert not os.path.exists(f"/run/netns/{name}")


async def test_host_services_start_with_the_host_and_close_with_it() -> None:
    """The hook the file server joins through: started after the runner, closed at shutdown."""
    events: list[str] = []

    class Service:
        async def aclose(self) -> None:
            events.append("closed")

    async def start(ctx: HostContext) -> Service:
        events.append(f"started {ctx.host_id} {ctx.projects_dir.name}")
        assert ctx.system.runtimes  # the runner's actors are up already
        return Service()

    with searchable_tmp("hook") as tmp:
        server = HostServer(make_config(tmp), services=[start])
        await server.start()
        assert events == [f"started {server.host_id} projects"]
        await server.aclose()
        assert events[-1] == "closed"


def test_probe_reports_a_reason_for_everything_missing() -> None:
    caps = probe(want_netns=False, want_mountns=False, want_cgroups=False)
    report = caps.report()
    assert set(report.missing) >= {"netns", "mountns", "cgroup-memory", "cgroup-cpu", "cgroup-pids"}
    assert all(reason for reason in report.missing.values())
    assert not set(report.applied) & set(report.missing)


def test_config_refuses_bad_values() -> None:
    with pytest.raises(Exception) as e:
        HostConfig(data_dir="relative", signing_keys="/k")
    assert getattr(e.value, "code", None) == 400
    with pytest.raises(Exception) as e:
        HostConfig(data_dir="/d")
    assert "public_keys" in str(e.value)
    config = HostConfig.from_toml(
        '[host]\ndata_dir = "/d"\nsigning_keys = "/k"\n[host.limits]\nmemory_mb = 64\n'
    )
    assert config.limits.memory_mb == 64
    with pytest.raises(Exception) as e:
        HostConfig.from_toml('[host]\ndata_dir = "/d"\nsigning_keys = "/k"\nbogus = 1\n')
    assert "bogus" in str(e.value)
    assert str(
        uuid.UUID(HostConfig(data_dir="/d", signing_keys="/k", host_id=str(uuid.UUID(int=5))).host_id or "")
    )
