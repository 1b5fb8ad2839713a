"""persist.DurableReminderStore: the ReminderStore protocol on real SQLite files, across restarts, a
SIGKILL, and an ActorSystem restart."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

import conat
from actors import Actor, ActorSystem, Reminder, ReminderStore, actor_proxy
from conat._errors import ClosedError
from conat.testing import FakeClock
from persist import BadRequest, Corrupt, DurableReminderStore, StreamStore, TooLarge

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


def _store_over(root: Path) -> StreamStore:
    return StreamStore(lambda path: root / f"{path}.db")


def _r(
    actor: str, key: str, name: str = "wake", due: float = 1000.0, period: float | None = None
) -> Reminder:
    return Reminder(actor, key, name, due, period)


@pytest.fixture
async def reminders(tmp_path: Path) -> AsyncIterator[DurableReminderStore]:
    async with await DurableReminderStore.open(tmp_path) as store:
        yield store


# ---- the protocol --------------------------------------------------------------------------------


async def test_is_a_reminder_store(reminders: DurableReminderStore) -> None:
    store: ReminderStore = reminders
    assert await store.load("Nobody") == []


async def test_save_load_delete(reminders: DurableReminderStore) -> None:
    a1, a2, b1 = _r("A", "k1"), _r("A", "k2", period=5.0), _r("AB", "k1")
    for r in (a1, a2, b1):
        await reminders.save(r)
    assert await reminders.load("A") == [a1, a2]  # not "AB"'s, though "A" is a prefix of it
    assert await reminders.load("AB") == [b1]
    await reminders.delete("A", "k1", "wake")
    await reminders.delete("A", "k1", "wake")  # missing: not an error
    await reminders.delete("Z", "k", "n")
    assert await reminders.load("A") == [a2]


async def test_save_replaces_the_same_reminder(reminders: DurableReminderStore) -> None:
    await reminders.save(_r("A", "k", due=1.0))
    await reminders.save(_r("A", "k", due=2.0, period=3.0))
    await reminders.save(_r("A", "k", name="other", due=9.0))
    assert await reminders.load("A") == [
        _r("A", "k", name="other", due=9.0),
        _r("A", "k", due=2.0, period=3.0),
    ]


async def test_key_encoding_is_stable_and_unambiguous(tmp_path: Path) -> None:
    tricky = [
        _r("a/b", "c", "d"),
        _r("a", "b/c", "d"),
        _r("a", "b", "c/d"),
        _r("a", "", "50%"),
        _r("Cart.v2", "user:1 é", "x~y"),
    ]
    async with _store_over(tmp_path) as streams:
        store = DurableReminderStore(streams, "hub/reminders")
        for r in tricky:
            await store.save(r)
        async with streams.stream("hub/reminders") as stream:
            assert await stream.keys() == sorted(
                ["a%2Fb/c/d", "a/b%2Fc/d", "a/b/c%2Fd", "a//50%25", "Cart.v2/user%3A1%20%C3%A9/x~y"]
            )
        assert await store.load("a/b") == [tricky[0]]
        assert await store.load("a") == [tricky[3], tricky[2], tricky[1]]  # by (key, name)
        assert await store.load("Cart.v2") == [tricky[4]]


async def test_bad_parts_are_refused(reminders: DurableReminderStore) -> None:
    with pytest.raises(TooLarge):
        await reminders.save(_r("A", "k" * 5000))
    with pytest.raises(BadRequest):
        await reminders.save(_r("A", "\ud800"))
    async with _store_over(Path()) as streams:
        with pytest.raises(ValueError, match="path"):
            DurableReminderStore(streams, "")


async def test_concurrent_calls(reminders: DurableReminderStore) -> None:
    saved = [_r(actor, f"k{i}", due=float(i)) for actor in ("A", "B") for i in range(100)]
    loads = await asyncio.gather(
        *(reminders.save(r) for r in saved), *(reminders.load("A") for _ in range(5))
    )
    assert all(isinstance(got, list) for got in loads[len(saved) :])
    assert sorted(await reminders.load("A"), key=lambda r: r.due) == saved[:100]
    await asyncio.gather(*(reminders.delete("A", f"k{i}", "wake") for i in range(0, 100, 2)))
    assert sorted(await reminders.load("A"), key=lambda r: r.due) == saved[1:100:2]
    assert len(await reminders.load("B")) == 100


async def test_corrupt_entries_are_reported_and_other_actors_unaffected(tmp_path: Path) -> None:
    async with _store_over(tmp_path) as streams:
        store = DurableReminderStore(streams, "hub/reminders")
        await store.save(_r("B", "k"))
        async with streams.stream("hub/reminders") as stream:
            await stream.set(b"\xc1 not msgpack", key="A/k/wake")
        with pytest.raises(Corrupt, match="A/k/wake"):
            await store.load("A")
        assert await store.load("B") == [_r("B", "k")]  # A's bad payload is never decoded
        async with streams.stream("hub/reminders") as stream:
            await stream.set(msgspec.msgpack.encode(_r("A", "other")), key="A/k/wake")
        with pytest.raises(Corrupt, match="holds the reminder"):
            await store.load("A")


async def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = await DurableReminderStore.open(tmp_path / "sub" / "r.db")
    await store.aclose()
    await store.aclose()
    with pytest.raises(ClosedError):
        await store.save(_r("A", "k"))
    with pytest.raises(ClosedError):
        await store.load("A")
    async with _store_over(tmp_path) as streams:  # a shared stream store stays open
        shared = DurableReminderStore(streams, "hub/reminders")
        await shared.aclose()
        with pytest.raises(ClosedError):
            await shared.delete("A", "k", "n")
        async with streams.stream("hub/reminders"):
            pass


# ---- durability ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["dir", "file"])
async def test_survives_close_and_reopen(tmp_path: Path, where: str) -> None:
    location = tmp_path if where == "dir" else tmp_path / "deep" / "rem.db"
    saved = [_r("A", f"k{i}", due=float(i), period=1.0 if i % 2 else None) for i in range(10)]
    async with await DurableReminderStore.open(location) as store:
        for r in saved:
            await store.save(r)
        await store.delete("A", "k0", "wake")
    async with await DurableReminderStore.open(location) as again:
        assert sorted(await again.load("A"), key=lambda r: r.due) == saved[1:]


async def test_survives_close_and_reopen_on_a_shared_stream_store(tmp_path: Path) -> None:
    async with _store_over(tmp_path) as streams:
        await DurableReminderStore(streams, "hosts/h1/reminders").save(_r("A", "k"))
    assert (tmp_path / "hosts" / "h1" / "reminders.db").exists()
    async with _store_over(tmp_path) as streams:
        assert await DurableReminderStore(streams, "hosts/h1/reminders").load("A") == [_r("A", "k")]
        assert await DurableReminderStore(streams, "hosts/h2/reminders").load("A") == []


async def test_open_fails_cleanly_on_a_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "rem.db"
    bad.write_bytes(b"this is not a database" * 200)
    for _ in range(2):  # moved aside, then refused: reminders are not lost silently
        with pytest.raises(Corrupt):
            await DurableReminderStore.open(bad)
    assert await DurableReminderStore.reset(bad) == []  # the operator's decision
    async with await DurableReminderStore.open(bad) as store:
        assert await store.load("A") == []


_WRITER = """
import asyncio, sys
from actors import Reminder
from persist import DurableReminderStore

async def main() -> None:
    store = await DurableReminderStore.open(sys.argv[1])
    i = 0
    while True:
        await store.save(Reminder("Killed", f"k{i}", "wake", 1000.0 + i))
        print(i, flush=True)  # acknowledged
        i += 1

asyncio.run(main())
"""


async def test_acknowledged_saves_survive_sigkill(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, str(tmp_path), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    acked: list[int] = []
    try:
        async with asyncio.timeout(20):
            while len(acked) < 30:
                line = await proc.stdout.readline()
                assert line, "the writer exited early"
                acked.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        rest = await proc.stdout.read()
        await proc.wait()
    acked += [int(n) for n in rest.split()]  # printed before the kill: acknowledged too
    assert proc.returncode == -signal.SIGKILL
    async with await DurableReminderStore.open(tmp_path) as store:
        loaded = {r.key: r for r in await store.load("Killed")}
    for i in acked:
        assert loaded[f"k{i}"] == Reminder("Killed", f"k{i}", "wake", 1000.0 + i)


# ---- end to end: an ActorSystem restart -----------------------------------------------------------

FIRED: list[tuple[str, str]] = []


class DurablySleepy(Actor, subject="durable-reminders.*"):
    async def arm(self, delay: float) -> None:
        await self.reminder("wake", delay)

    async def on_reminder(self, name: str) -> None:
        FIRED.append((self.key, name))


async def _eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)


async def test_a_reminder_fires_after_the_actor_system_restarts(tmp_path: Path, client: conat.Client) -> None:
    FIRED.clear()
    # The first system's clock never moves, so the reminder cannot fire before it stops.
    frozen = FakeClock(wall_start=time.time())
    async with (
        await DurableReminderStore.open(tmp_path) as store,
        ActorSystem(client, clock=frozen, reminders=store, stop_timeout=5.0) as system,
    ):
        await system.start(DurablySleepy)
        await actor_proxy(client, DurablySleepy, "k1").arm(0.2)
    assert FIRED == []

    async with await DurableReminderStore.open(tmp_path) as store:
        assert [(r.key, r.name) for r in await store.load("DurablySleepy")] == [("k1", "wake")]
        async with ActorSystem(client, reminders=store, stop_timeout=5.0) as system:  # real clock
            await system.start(DurablySleepy)
            await _eventually(lambda: FIRED == [("k1", "wake")], "the reminder after the restart")
            async with asyncio.timeout(5):  # a one-shot reminder is deleted once fired
                while await store.load("DurablySleepy"):
                    await asyncio.sleep(0.005)
