"""``conat run --partitions N`` in real subprocesses on a real nats-server that splits the keyed
type's subject: N workers, each serving one partition; a killed worker's keys answer 503 until it
is started again; ``--partition I/N`` on a bus that does not split is refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import conat
from actors import partition_of, subject_mapping
from conat import NoResponders, Timeout
from conat._server import NatsServer
from conat._server_config import ServerConfig

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
COUNT = 2
TARGET = "tests.actors.partitioned_actors"


@pytest.fixture(scope="module")
def split_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(
        ServerConfig(server_name="conat-test-run-partitions", mappings=dict([subject_mapping("where.*", COUNT)])),
        directory=tmp_path_factory.mktemp("nats-run-partitions"),
    )
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


async def _conat_run(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conat.cli", "run", *args, "--url", url,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


async def _lines_until(proc: asyncio.subprocess.Process, needle: str) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    while not lines or needle not in lines[-1]:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, f"conat run ended early: {lines}"
        lines.append(line.decode().strip())
    return lines


async def _pid(client: conat.Client, subject: str, *, wait: bool = True, timeout: float = 15) -> int:
    reply = await client.request(subject, {"name": "pid"}, timeout=timeout, wait_for_interest=wait)
    pid = reply.data
    assert isinstance(pid, int)
    return pid


async def test_each_partition_has_its_own_worker_process(split_server: NatsServer) -> None:
    proc = await _conat_run(split_server.url, TARGET, "--partitions", str(COUNT), "--stop-timeout", "1")
    try:
        lines = await _lines_until(proc, "in 2 partitions")
        ready = lines[-1]
        assert ready.startswith("serving Where on where.* in 2 partitions (pids [")
        pids = [int(p) for p in ready.split("[")[1].rstrip("])").split(", ")]
        assert len(set(pids)) == COUNT and proc.pid not in pids
        # the workers' own lines: each keyed partition once, the unkeyed type (no queue) in worker 0
        assert sorted(x for x in lines if "partition" in x and "pids" not in x) == [
            "serving Where on where.* (partition 0 of 2)",
            "serving Where on where.* (partition 1 of 2)",
        ]
        assert lines.count("serving Lone on lone") == 1
        keys = {partition_of(k, COUNT): k for k in (f"k{i}" for i in range(20))}
        async with await conat.connect(split_server.url) as client:
            served = {index: await _pid(client, f"where.{key}") for index, key in keys.items()}
            assert served == {0: pids[0], 1: pids[1]}  # worker i owns partition i
            assert await _pid(client, "lone") == pids[0]
            # worker 1 dies: its keys answer 503 at once, the others go on; it is started again
            os.kill(pids[1], signal.SIGKILL)
            with pytest.raises(NoResponders) as gone:
                for _ in range(100):  # until the server noticed the dead connection
                    with contextlib.suppress(Timeout):  # sent to the dead one before it noticed
                        await _pid(client, f"where.{keys[1]}", wait=False, timeout=0.5)
                    await asyncio.sleep(0.05)
            assert gone.value.code == 503
            assert await _pid(client, f"where.{keys[0]}") == pids[0]
            again = await _pid(client, f"where.{keys[1]}")  # waits for interest: the new worker
            assert again not in pids
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        for pid in [pids[0], again]:  # the workers stopped with it
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_partition_the_bus_does_not_split_is_refused(nats_server: NatsServer) -> None:
    proc = await _conat_run(nats_server.url, f"{TARGET}:Where", "--partition", "1/2")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, err
    assert b"partitions-unmapped" in err or b"does not split where.*" in err
    # partitions split keyed types only; and the two options are exclusive
    proc = await _conat_run(nats_server.url, f"{TARGET}:Lone", "--partitions", "2")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and b"none of the targets is keyed" in err
