"""Shared fixtures: the anyio backend, a session nats-server, and an isolated data directory.

Async tests use anyio's pytest plugin (``pytestmark = pytest.mark.anyio``). They run on plain asyncio
with debug mode on; ``--uvloop`` switches the whole run to uvloop (still in debug mode).
``--run-slow`` also runs the tests marked ``slow``.

``nats_server`` is session-scoped and *synchronous*: it is started with
:meth:`NatsServer.start_sync`, which runs the server's asyncio plumbing in a private event-loop
thread. The server thus belongs to no test's event loop, works for sync and async tests alike, and
does not force every async test onto one session-wide loop. Tests that kill or restart a server take
``fresh_nats_server`` (function-scoped, async, on the test's own loop) instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from conat._server import NatsServer
from conat._server_config import ServerConfig


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conat")
    group.addoption("--uvloop", action="store_true", default=False, help="run async tests on uvloop")
    group.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    if request.config.getoption("--uvloop"):
        return "asyncio", {"debug": True, "use_uvloop": True}
    return "asyncio", {"debug": True}


@pytest.fixture(scope="session", autouse=True)
def conat_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``$CONAT_DATA_DIR`` for the whole session: tests never touch the real home directory."""
    path = tmp_path_factory.mktemp("conat-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONAT_DATA_DIR", str(path))
        mp.delenv("XDG_DATA_HOME", raising=False)
        yield path


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A running nats-server on a random loopback port, shared by the session. Use ``.url``.

    Do not stop, kill or restart it: take ``fresh_nats_server`` for that.
    """
    server = NatsServer(
        ServerConfig(server_name="conat-test"), directory=tmp_path_factory.mktemp("nats-server")
    )
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture
async def fresh_nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A nats-server of this test alone, on the test's event loop: kill and restart it at will."""
    async with NatsServer(directory=tmp_path / "nats-server") as server:
        yield server
