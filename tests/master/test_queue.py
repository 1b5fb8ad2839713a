"""The work queue on a real SQLite file: one owner per action (even across two connections, as two
masters sharing a database would be), leases that expire, retries with backoff, permanent failures,
deduplication and waiting for an outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conat.testing import FakeClock
from master._db import Database
from master._queue import Action, Permanent, WorkQueue

pytestmark = pytest.mark.anyio



@pytest.fixture
async def dbs(tmp_path: Path) -> AsyncIterator[tuple[Database, Database]]:
    first = await Database.open(tmp_path / "q.sqlite")
    second = await Database.open(tmp_path / "q.sqlite")
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


async def _enqueue(queue: WorkQueue, kind: str, **options: object) -> int:
    async with queue.db.transaction() as tx:
        return await queue.enqueue(tx, kind, "t", {"n": 1}, **options)  # type: ignore[arg-type]


async def test_an_action_has_one_owner_until_its_lease_expires(dbs: tuple[Database, Database]) -> None:
    clock = FakeClock()
    a, b = WorkQueue(dbs[0], clock.wall, lease=30), WorkQueue(dbs[1], clock.wall, lease=30)
    ids = [await _enqueue(a, "k") for _ in range(20)]
    claimed = await asyncio.gather(*(q.claim() for q in [a, b] * 12))
    got = [c.id for c in claimed if c is not None]
    assert sorted(got) == ids  # each once, never twice, across both connections
    assert await a.claim() is None and await b.claim() is None
    await clock.advance(31)  # owners gone (master killed): the leases run out, the actions run again
    again = await b.claim()
    assert again is not None and again.id == ids[0] and again.attempts == 2


async def test_failures_are_retried_with_backoff_then_fail(dbs: tuple[Database, Database]) -> None:
    clock = FakeClock()
    queue = WorkQueue(dbs[0], clock.wall, lease=30, backoff_min=1.0, backoff_max=8.0)
    attempts: list[int] = []

    async def flaky(action: Action) -> str:
        attempts.append(action.attempts)
        raise RuntimeError(f"try {action.attempts}")

    queue.register("k", flaky)
    action_id = await _enqueue(queue, "k", max_attempts=3)
    delays = []
    for _ in range(3):
        action = await queue.claim()
        assert action is not None
        outcome = await queue.execute(action)
        async with dbs[0].reading() as tx:
            row = await tx.fetch_one("SELECT not_before, state FROM actions WHERE id = ?", (action_id,))
        assert row is not None
        delays.append(row[0] - clock.wall())
        assert await queue.claim() is None  # not before its backoff
        await clock.advance(row[0] + 0.01 - clock.wall())
    assert attempts == [1, 2, 3]
    assert outcome.state == "failed" and outcome.error == "try 3"
    assert 1.0 <= delays[0] < delays[1] <= 8.0 * 1.5


async def test_permanent_failures_dedup_and_waiting(dbs: tuple[Database, Database]) -> None:
    clock = FakeClock()
    queue = WorkQueue(dbs[0], clock.wall, lease=30, workers=2)

    async def hopeless(action: Action) -> str:
        raise Permanent("cannot ever work")

    async def fine(action: Action) -> str:
        return f"done {action.args['n']}"

    queue.register("bad", hopeless)
    queue.register("good", fine)
    bad = await _enqueue(queue, "bad", dedup="x")
    assert await _enqueue(queue, "bad", dedup="x") == bad  # still active: the same action
    good = await _enqueue(queue, "good")
    queue.start()
    try:
        outcomes = await asyncio.gather(queue.wait(bad, 10), queue.wait(good, 10))
    finally:
        await queue.aclose()
    assert [(o.state, o.error, o.result, o.attempts) for o in outcomes] == [
        ("failed", "cannot ever work", None, 1),
        ("done", "", "done 1", 1),
    ]
    assert await _enqueue(queue, "bad", dedup="x") != bad  # ended: the key is free again
