"""``conat persist serve --workers 2`` on a bus that splits persist.*.> two ways: real worker
processes, each serving the scopes of its partition; a worker killed with SIGKILL leaves its
scopes answering 503 until the supervisor has started it again, and nothing it acknowledged is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import conat
from actors import partition_of
from conat import NoResponders
from conat._server import NatsServer
from conat._server_config import ServerConfig
from persist import AStream, RootInUse, persist_mappings
from persist._rootlock import RootLock
from persist.bootlog import events, publish
from tests.conat.cli_support import Proc, procs

__all__ = ["procs"]  # a fixture: imported to be found, used by name

pytestmark = pytest.mark.anyio


@pytest.fixture
async def split_bus(tmp_path: Path) -> AsyncIterator[NatsServer]:
    config = ServerConfig(server_name="conat-test-workers", mappings=persist_mappings(2))
    async with NatsServer(config, directory=tmp_path / "nats-server") as server:
        yield server


async def _unanswered(client: conat.Client, subject: str) -> bool:
    """Whether ``subject`` answers "no responders" within a second (the server needs a moment to
    see a killed connection go: a request sent before that is lost, and times out)."""
    for _ in range(10):
        try:
            await client.request(subject, b"", timeout=0.1, encoding="raw")
        except NoResponders:
            return True
        except conat.Timeout:
            continue
    return False


def _scopes() -> dict[int, str]:
    """A project scope of each partition."""
    found: dict[int, str] = {}
    while len(found) < 2:
        scope = f"project-{uuid.uuid4()}"
        found.setdefault(partition_of(scope, 2), scope)
    return found


async def test_two_workers_split_the_scopes_and_a_killed_one_comes_back(
    split_bus: NatsServer, tmp_path: Path, procs: list[Proc]
) -> None:
    root = tmp_path / "sync"
    serve = Proc(
        ["persist", "serve", "--workers", "2", "--url", split_bus.url, "--root", str(root), "--json"]
    )
    procs.append(serve)
    ready = await asyncio.to_thread(serve.expect, "stdout", '"workers":2', 60.0)
    scopes = _scopes()
    async with await conat.connect(split_bus.url) as client:
        for scope in scopes.values():
            s = AStream(client, scope, "log", timeout=20.0)
            assert [(await s.publish(i)).seq for i in range(3)] == [1, 2, 3]
        # bootlogs go through worker 0, on to their scope's worker
        project = scopes[1].removeprefix("project-")
        await publish(client, project_id=project, phase="start")
        # a second split on the same root is refused
        with pytest.raises(RootInUse):
            RootLock.acquire([root], (0, 3))
        # kill -9 the worker of partition 1: its scope answers 503 until it is started again
        pids = json.loads(ready)["pids"]
        os.kill(pids[1], signal.SIGKILL)
        assert await _unanswered(client, f"persist.{scopes[1]}.api")
        s1 = AStream(client, scopes[1], "log", timeout=30.0)
        assert (await s1.publish("after")).seq == 4  # waited for the worker to come back
        got = [m.value() for batch in [b async for b in s1.get_all()] for m in batch]
        assert got == [0, 1, 2, "after"]
        logged = [e async for e in events(client, project_id=project, follow=False)]
        assert [e.phase for e in logged] == ["start"]
    serve.popen.send_signal(signal.SIGTERM)
    code, _, _ = await asyncio.to_thread(serve.finish, 30)
    assert code == 0
