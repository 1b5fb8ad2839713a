"""Host liveness on a real database: a keepalive that arrives while a sweep is committing a host's
offline state keeps it online (regression: the sweep's commit used to overwrite it)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from conat.platform import HostLoad
from conat.testing import FakeClock
from master._db import AccountRow, Database, HostRow
from master._liveness import HostLiveness

pytestmark = pytest.mark.anyio



async def test_a_keepalive_racing_the_sweep_keeps_the_host_online(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "m.sqlite")
    try:
        clock = FakeClock()
        host = str(uuid.uuid4())
        async with db.transaction() as tx:
            await tx.insert_account(AccountRow(id="a", name="a", admin=True, revision=0, created=0.0))
            await tx.insert_host(HostRow(
                id=host, name="h", owner="a", shared=False, region="", capacity=1, status="online", last_seen=None,
                bus_url="", public_key="", provider="", revision=0, created=0.0,
            ))  # fmt: skip
        liveness = HostLiveness(db, clock.wall, offline_seconds=5.0)
        await liveness.load()
        await clock.advance(10)  # silent past the limit: the sweep will mark it offline
        async with db.lock:  # the sweep decides, then waits for the database...
            sweep = asyncio.ensure_future(liveness.sweep())
            await asyncio.sleep(0.05)
            keepalive = asyncio.ensure_future(
                liveness.seen(host, 1, HostLoad())
            )  # ...while a keepalive comes
            await asyncio.sleep(0.05)
        await asyncio.gather(sweep, keepalive)
        assert liveness.status(host) == "online"
        async with db.reading() as tx:
            row = await tx.host(host)
        assert row is not None and row.status == "online"
        assert [e.action for e in await db.audit_log()] == ["offline", "online"]
    finally:
        await db.aclose()
