"""Resource limits, enforced on real processes: a memory hog is stopped, a fork bomb is contained, a
huge file is cut at the limit. Small limits keep these quick (64 MB, 50 processes, 8 MB)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from host import Limits, exec_command

from .conftest import Host

pytestmark = pytest.mark.anyio

SMALL = Limits(memory_mb=64, pids=50, file_size_mb=8, open_files=128)


@pytest.fixture(scope="module")
async def project(host: Host) -> AsyncIterator[str]:
    """One project with small limits for the whole module (the fork bomb, last, stops it)."""
    started = await host.new_project(SMALL)
    yield started
    if (await host.runner.status(started)).state != "opened":
        await host.runner.stop(started, wait=30)


async def test_a_memory_hog_is_stopped(host: Host, project: str) -> None:
    status = await host.runner.status(project)
    if "cgroup-memory" not in status.isolation.applied:
        pytest.skip(f"no memory cgroup: {status.isolation.missing.get('cgroup-memory')}")
    hog = "x = bytearray(256 * 1024 * 1024); print('survived')"
    result = await exec_command(host.client, project, ["python3", "-c", hog], timeout=60)
    assert b"survived" not in result.stdout
    assert result.exit.signal == signal.SIGKILL or result.code not in (0, None)
    assert (await host.runner.status(project)).state == "running"  # the project itself survives
    adj = await exec_command(host.client, project, ["sh", "-c", "cat /proc/self/oom_score_adj"])
    assert adj.stdout.strip() == b"500"  # commands go first when memory runs out
    assert (await exec_command(host.client, project, ["true"])).code == 0


async def test_a_huge_file_is_cut_at_the_limit(host: Host, project: str) -> None:
    result = await exec_command(host.client, project, ["sh", "-c", "head -c 100000000 /dev/zero > big"])
    assert result.code != 0 and b"File size limit exceeded" in result.stderr
    size = (await exec_command(host.client, project, ["stat", "-c", "%s", "big"])).stdout.strip()
    assert int(size) == SMALL.file_size_mb * 1024 * 1024


async def test_open_files_are_capped(host: Host, project: str) -> None:
    result = await exec_command(host.client, project, ["sh", "-c", "ulimit -n; ulimit -Hn"])
    assert result.stdout.split() == [b"128", b"128"]


async def test_a_fork_bomb_is_contained(host: Host, project: str) -> None:
    status = await host.runner.status(project)
    if "cgroup-pids" not in status.isolation.applied:
        pytest.skip(f"no pids cgroup: {status.isolation.missing.get('cgroup-pids')}")
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 2; echo done"
    result = await exec_command(host.client, project, ["sh", "-c", bomb], timeout=5)
    usage = (await host.runner.status(project)).usage
    assert usage is not None and usage.pids <= SMALL.pids
    # the host still answers, and stopping the project kills every process of it
    stopped = await host.runner.stop(project, wait=30)
    assert stopped.state == "opened"
    assert result.exit is not None
    pids = Path("/sys/fs/cgroup/pids")
    assert not any(pids.glob(f"**/{project}/cgroup.procs"))
