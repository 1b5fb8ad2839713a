"""Every request is answered when a type stops or escalates, whatever its key is doing; restart
backoff survives an empty mailbox; starting (and restarting) a type is all or nothing."""

from __future__ import annotations

import asyncio

import pytest

import conat
from actors import (
    Actor,
    ActorSystem,
    BrokenInvariant,
    MemoryReminderStore,
    Reminder,
    RestartPolicy,
    actor_proxy,
)
from conat import RemoteError
from conat._server import NatsServer
from conat.testing import FakeClock

from .conftest import eventually

pytestmark = pytest.mark.anyio

LOG: list[str] = []
GATES: dict[str, asyncio.Event] = {}
SLOW_BACKOFF = RestartPolicy(max_restarts=100, within=600.0, backoff_min=10.0, backoff_max=600.0, jitter=0.0)


@pytest.fixture(autouse=True)
def _reset() -> None:
    LOG.clear()
    GATES.clear()


async def _server_and_caller(url: str) -> tuple[conat.Client, conat.Client]:
    return await conat.connect(url), await conat.connect(url)


def _all_stopping(results: list[object]) -> bool:
    return all(isinstance(r, RemoteError) and r.code == conat.UNAVAILABLE for r in results)


async def _stop_and_expect_503s(system: ActorSystem, calls: list[asyncio.Task[str]]) -> None:
    """Stop past the deadline: every queued call must get 503 (not its own 30 s timeout)."""
    await system.stop(timeout=0.2)
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    assert _all_stopping(results), results


class Loading(Actor, subject="stopping.loading.*"):
    async def on_activate(self) -> None:
        LOG.append(f"activate:{self.key}")
        await GATES["load"].wait()

    async def ping(self) -> str:
        return "pong"


async def test_stop_answers_callers_queued_behind_a_key_that_is_activating(nats_server: NatsServer) -> None:
    server_side, caller = await _server_and_caller(nats_server.url)
    async with server_side, caller:
        GATES["load"] = asyncio.Event()  # never set: on_activate hangs
        system = ActorSystem(server_side)
        await system.start(Loading)
        proxy = actor_proxy(caller, Loading, "k", timeout=30)
        calls = [asyncio.create_task(proxy.ping()) for _ in range(3)]
        await eventually(lambda: LOG == ["activate:k"], "activation started")
        await eventually(lambda: system.runtime(Loading).statistics().buffered == 3, "three queued")
        await _stop_and_expect_503s(system, calls)
        assert system.runtime(Loading).statistics().rejected_stopping == 3


class Flaky(Actor, subject="stopping.flaky.*", policy=SLOW_BACKOFF):
    async def on_activate(self) -> None:
        LOG.append(f"activate:{self.key}")
        if LOG.count(f"activate:{self.key}") == 1:
            raise OSError("first load fails")

    async def ping(self) -> str:
        return "pong"


async def test_stop_answers_callers_of_a_key_waiting_out_its_restart_backoff(nats_server: NatsServer) -> None:
    server_side, caller = await _server_and_caller(nats_server.url)
    async with server_side, caller:
        system = ActorSystem(server_side, clock=FakeClock())  # the clock never moves: backoff lasts
        await system.start(Flaky)
        proxy = actor_proxy(caller, Flaky, "k", timeout=30)
        calls = [asyncio.create_task(proxy.ping()) for _ in range(2)]
        await eventually(lambda: LOG == ["activate:k"], "first activation failed")
        await eventually(lambda: system.runtime(Flaky).statistics().buffered == 2, "both wait")
        await _stop_and_expect_503s(system, calls)


class Leaving(Actor, subject="stopping.leaving.*", idle=None):
    async def on_deactivate(self) -> None:
        LOG.append(f"deactivating:{self.key}")
        await GATES["leave"].wait()

    async def leave(self) -> None:
        self.passivate()

    async def ping(self) -> str:
        return "pong"


async def test_stop_answers_callers_of_a_key_running_on_deactivate(nats_server: NatsServer) -> None:
    server_side, caller = await _server_and_caller(nats_server.url)
    async with server_side, caller:
        GATES["leave"] = asyncio.Event()  # never set: on_deactivate hangs
        system = ActorSystem(server_side)
        await system.start(Leaving)
        proxy = actor_proxy(caller, Leaving, "k", timeout=30)
        await proxy.leave()
        await eventually(lambda: LOG == ["deactivating:k"], "passivation started")
        calls = [asyncio.create_task(proxy.ping()) for _ in range(2)]
        await eventually(lambda: system.runtime(Leaving).statistics().buffered == 2, "both wait")
        await _stop_and_expect_503s(system, calls)


class Crashing(
    Actor,
    subject="stopping.crashing.*",
    policy=RestartPolicy(max_restarts=0, within=60.0, backoff_min=0.0, backoff_max=0.0),
):
    async def on_activate(self) -> None:
        if self.key == "slow":
            LOG.append("activate:slow")
            await GATES["load"].wait()

    async def crash(self) -> None:
        raise BrokenInvariant("boom")

    async def ping(self) -> str:
        return "pong"


async def test_escalation_answers_callers_queued_behind_an_activating_key(nats_server: NatsServer) -> None:
    server_side, caller = await _server_and_caller(nats_server.url)
    async with server_side, caller:
        GATES["load"] = asyncio.Event()
        clock = FakeClock()  # the system's restart backoff never passes
        async with ActorSystem(server_side, clock=clock) as system:
            runtime = await system.start(Crashing)
            slow = actor_proxy(caller, Crashing, "slow", timeout=30)
            calls = [asyncio.ensure_future(slow.ping()) for _ in range(3)]
            await eventually(lambda: runtime.statistics().buffered == 3, "three queued behind activation")
            with pytest.raises(RemoteError):
                await actor_proxy(caller, Crashing, "bad").crash()  # the first crash escalates
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
            assert _all_stopping(results), results
            assert runtime.failed is not None


class Broken(Actor, subject="stopping.broken.*", policy=SLOW_BACKOFF):
    async def on_activate(self) -> None:
        LOG.append("activate")

    async def crash(self) -> None:
        raise BrokenInvariant("every call")


async def test_restart_backoff_is_kept_when_the_mailbox_was_empty_at_the_crash(
    nats_server: NatsServer,
) -> None:
    server_side, caller = await _server_and_caller(nats_server.url)
    clock = FakeClock()
    async with server_side, caller, ActorSystem(server_side, clock=clock) as system:
        await system.start(Broken)
        proxy = actor_proxy(caller, Broken, "k", timeout=30)
        with pytest.raises(RemoteError):
            await proxy.crash()  # crash 1: backoff 10 s, and nothing else is queued
        assert system.runtime(Broken).activations.get("k") is None  # the record itself is gone
        second = asyncio.ensure_future(proxy.crash())
        await asyncio.sleep(0.2)
        assert LOG == ["activate"] and not second.done()  # still backing off, not reactivated at once
        await clock.advance(10.0)
        with pytest.raises(RemoteError):
            await second  # crash 2: the delay doubles to 20 s
        third = asyncio.ensure_future(proxy.crash())
        await clock.advance(19.0)
        await asyncio.sleep(0.2)
        assert LOG == ["activate", "activate"] and not third.done()
        await clock.advance(1.0)
        with pytest.raises(RemoteError):
            await third
        assert LOG == ["activate"] * 3
        # a quiet period (reset_after) lets the sequence start over, and the key is forgotten
        await clock.advance(600.0)
        with pytest.raises(RemoteError):
            await proxy.crash()
        assert LOG == ["activate"] * 4


class FailingStore(MemoryReminderStore):
    """Reminder store whose ``load`` fails the next ``failures`` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def load(self, actor: str) -> list[Reminder]:
        if self.failures > 0:
            self.failures -= 1
            raise OSError("reminder store unavailable")
        return await super().load(actor)


class Counted(
    Actor,
    subject="stopping.counted.*",
    policy=RestartPolicy(max_restarts=1, backoff_min=0.0, backoff_max=0.0),
):
    async def hit(self) -> int:
        LOG.append(f"hit:{self.key}")
        return len(LOG)

    async def crash(self) -> None:
        raise BrokenInvariant("boom")

    async def arm(self) -> None:
        await self.reminder("wake", 5.0)

    async def on_reminder(self, name: str) -> None:
        LOG.append(f"reminder:{self.key}:{name}")


async def test_a_failed_start_leaves_nothing_behind_and_a_retry_serves_once(nats_server: NatsServer) -> None:
    server_side, caller = await _server_and_caller(nats_server.url)
    async with server_side, caller:
        system = ActorSystem(server_side, reminders=FailingStore(failures=1))
        with pytest.raises(OSError, match="reminder store unavailable"):
            await system.start(Counted)
        proxy = actor_proxy(caller, Counted, "k", timeout=5)
        with pytest.raises(conat.NoResponders):  # nothing subscribed
            await proxy.hit()
        assert await _discovered(caller, "Counted") == []  # nor discoverable
        await system.start(Counted)
        assert await proxy.hit() == 1
        await asyncio.sleep(0.1)
        assert LOG == ["hit:k"]  # handled once, not once per start
        assert len(await _discovered(caller, "Counted")) == 1
        await system.stop()
        with pytest.raises(conat.NoResponders):  # stop reached everything the starts made
            await proxy.hit()
        assert await _discovered(caller, "Counted") == []


async def _discovered(client: conat.Client, name: str) -> list[str]:
    try:
        return [
            m.data["id"]
            async for m in client.request_many(f"$SRV.PING.{name}", None, timeout=0.5, idle_timeout=0.3)
        ]
    except (conat.NoResponders, conat.Timeout):
        return []


async def test_a_failed_restart_is_retried_and_leaves_nothing_half_started(nats_server: NatsServer) -> None:
    server_side, caller = await _server_and_caller(nats_server.url)
    clock = FakeClock()
    store = FailingStore(failures=0)
    policy = RestartPolicy(max_restarts=5, within=600.0, backoff_min=1.0, backoff_max=1.0, jitter=0.0)
    async with (
        server_side,
        caller,
        ActorSystem(server_side, clock=clock, reminders=store, policy=policy) as system,
    ):
        runtime = await system.start(Counted)
        proxy = actor_proxy(caller, Counted, "k", timeout=5)
        await proxy.arm()
        store.failures = 1  # the first restart's load fails
        for _ in range(2):  # the second crash exceeds max_restarts=1: the type escalates
            with pytest.raises(RemoteError):
                await proxy.crash()
        await eventually(lambda: not runtime.accepting and clock.sleepers == 1, "aborted, restart waits")
        await clock.advance(1.0)  # first restart: load fails; nothing may serve
        await eventually(lambda: store.failures == 0 and clock.sleepers == 1, "first restart failed")
        assert not runtime.accepting
        with pytest.raises(conat.NoResponders):
            await proxy.hit()
        await clock.advance(1.0)  # second restart succeeds, with the reminders loaded
        await eventually(lambda: runtime.accepting, "restarted")
        assert await proxy.hit() == 1
        await clock.advance(5.0)
        await eventually(lambda: "reminder:k:wake" in LOG, "the reminder survived the restarts")
        assert system.failure is None
