"""Supervision on a real bus: activation crashes, backoff on a fake clock, dead letters, restart
counts, escalation to the system and beyond."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

import conat
from actors import (
    LOOP_DETECTED,
    ActivationFailed,
    Actor,
    ActorSystem,
    BrokenInvariant,
    DeadLetter,
    Escalation,
    RestartPolicy,
    actor_proxy,
)
from conat import RemoteError
from conat.testing import FakeClock

from .conftest import eventually

pytestmark = pytest.mark.anyio

FAILING: set[str] = set()
ACTIVATIONS: list[str] = []
NO_BACKOFF = RestartPolicy(max_restarts=100, within=60.0, backoff_min=0.0, backoff_max=0.0)


@pytest.fixture(autouse=True)
def _reset() -> None:
    FAILING.clear()
    ACTIVATIONS.clear()


class Fragile(Actor, subject="fragile.*", policy=NO_BACKOFF):
    def __init__(self) -> None:
        self.value = 0

    async def on_activate(self) -> None:
        ACTIVATIONS.append(self.key)
        if self.key in FAILING:
            raise OSError(f"cannot load {self.key}")

    async def bump(self) -> int:
        self.value += 1
        return self.value

    async def corrupt(self) -> None:
        raise BrokenInvariant("value went negative")


async def test_broken_invariant_restarts_the_activation_with_fresh_state(
    system: ActorSystem, client: conat.Client
) -> None:
    await system.start(Fragile)
    proxy = actor_proxy(client, Fragile, "k")
    assert await proxy.bump() == 1
    assert await proxy.bump() == 2
    with pytest.raises(RemoteError) as e:
        await proxy.corrupt()
    assert e.value.code == 500
    assert "broken invariant" in e.value.remote_message
    assert await proxy.bump() == 1  # a new activation: the broken state was discarded
    stats = system.runtime(Fragile).statistics()
    assert (stats.crashes, stats.restarts, stats.activations) == (1, 1, 2)


async def test_a_message_that_keeps_crashing_activation_is_dead_lettered(
    system: ActorSystem, client: conat.Client
) -> None:
    await system.start(Fragile)
    letters = await client.subscribe("deadletter.Fragile")
    FAILING.add("bad")
    with pytest.raises(ActivationFailed) as e:  # the typed error, rebuilt from the reply's fields
        await actor_proxy(client, Fragile, "bad").bump()
    assert isinstance(e.value, RemoteError)  # ...and still the RemoteError it always was
    assert e.value.code == "activation-failed"
    assert e.value.key == "bad"
    assert "cannot load bad" in e.value.reason
    assert "cannot load bad" in e.value.remote_message
    letter = (await letters.next(timeout=5)).decode(DeadLetter)
    assert (letter.actor, letter.key, letter.subject) == ("Fragile", "bad", "fragile.bad")
    assert msgspec.msgpack.decode(letter.payload)["name"] == "bump"
    assert "OSError" in letter.error
    assert ACTIVATIONS.count("bad") == 2  # poison_after=2 attempts with the same head message
    # the key is not left dead: once its state loads again it serves
    FAILING.clear()
    assert await actor_proxy(client, Fragile, "bad").bump() == 1
    # other keys were never affected
    assert await actor_proxy(client, Fragile, "good").bump() == 1
    assert system.runtime(Fragile).statistics().dead_letters == 1


class Slow(Actor, subject="slowstart.*", policy=RestartPolicy(backoff_min=10.0, backoff_max=60.0, jitter=0.0)):
    async def on_activate(self) -> None:
        ACTIVATIONS.append(self.key)
        if len(ACTIVATIONS) == 1:
            raise OSError("first load fails")

    async def ping(self) -> str:
        return "pong"


async def test_activation_retry_waits_for_backoff_on_the_clock(
    system: ActorSystem, client: conat.Client, clock: FakeClock
) -> None:
    await system.start(Slow)
    call = asyncio.create_task(actor_proxy(client, Slow, "s").ping())
    await eventually(lambda: len(ACTIVATIONS) == 1, "first activation attempt")
    await clock.advance(9.0)
    assert len(ACTIVATIONS) == 1 and not call.done()  # still backing off
    await clock.advance(1.5)
    assert await call == "pong"
    assert ACTIVATIONS == ["s", "s"]


class Doomed(
    Actor,
    subject="doomed.*",
    policy=RestartPolicy(max_restarts=2, within=60.0, backoff_min=0.0, backoff_max=0.0),
):
    async def crash(self) -> None:
        raise BrokenInvariant("always")

    async def ok(self) -> str:
        return "ok"


async def test_too_many_restarts_escalate_and_the_system_restarts_the_type(
    client: conat.Client, clock: FakeClock
) -> None:
    policy = RestartPolicy(max_restarts=5, within=60.0, backoff_min=1.0, backoff_max=1.0, jitter=0.0)
    async with ActorSystem(client, clock=clock, policy=policy) as system:
        runtime = await system.start(Doomed)
        proxy = actor_proxy(client, Doomed, "d", timeout=2.0)
        for _ in range(3):  # the third crash exceeds 2 restarts in 60 s
            with pytest.raises(RemoteError):
                await proxy.crash()
        await eventually(lambda: runtime.failed is not None, "escalated")
        assert isinstance(runtime.failed, Escalation)
        assert runtime.failed.restarts == 3
        # aborted: nobody serves the subject until the system's backoff has passed
        await eventually(lambda: not runtime.accepting, "type aborted")
        with pytest.raises((conat.NoResponders, RemoteError)):
            await proxy.ok()
        await clock.advance(1.0)
        await eventually(lambda: runtime.accepting, "type restarted")
        assert await proxy.ok() == "ok"
        assert system.failure is None


async def test_escalation_beyond_the_system_policy_fails_the_system(
    client: conat.Client, clock: FakeClock
) -> None:
    policy = RestartPolicy(max_restarts=0, within=60.0)
    system = ActorSystem(client, clock=clock, policy=policy)
    runtime = await system.start(Doomed)
    proxy = actor_proxy(client, Doomed, "d", timeout=2.0)
    for _ in range(3):
        with pytest.raises(RemoteError):
            await proxy.crash()
    with pytest.raises(Escalation) as e:
        await asyncio.wait_for(system.wait(), 5)
    assert e.value.who == "actor system"
    assert isinstance(e.value.cause, Escalation)
    assert not runtime.accepting
    with pytest.raises(conat.NoResponders):
        await proxy.ok()


class Ping(Actor, subject="chain.ping.*"):
    async def me(self) -> str:
        return await actor_proxy(self.client, Ping, self.key, timeout=5).leaf()

    async def leaf(self) -> str:
        return "unreachable"

    async def other(self, key: str) -> str:
        return await actor_proxy(self.client, Pong, key, timeout=5).back(self.key)

    async def plain(self) -> str:
        return "ping"


class Pong(Actor, subject="chain.pong.*"):
    async def back(self, key: str) -> str:
        return await actor_proxy(self.client, Ping, key, timeout=5).plain()

    async def fine(self) -> str:
        return await actor_proxy(self.client, Ping, "elsewhere", timeout=5).plain()


async def test_reentrant_calls_are_refused_instead_of_deadlocking(
    system: ActorSystem, client: conat.Client
) -> None:
    await system.start(Ping)
    await system.start(Pong)
    # a key calling itself: refused at once with 508 (not a 5 s timeout), and the actor lives on
    with pytest.raises(RemoteError) as e:
        await actor_proxy(client, Ping, "a").me()
    assert e.value.code == LOOP_DETECTED
    assert "Ping/a -> Ping/a" in e.value.remote_message
    # A -> B -> A through another actor type
    with pytest.raises(RemoteError) as e:
        await actor_proxy(client, Ping, "a").other("b")
    assert e.value.code == LOOP_DETECTED
    assert "Ping/a -> Pong/b -> Ping/a" in e.value.remote_message
    # a chain that does not come back is fine
    assert await actor_proxy(client, Pong, "c").fine() == "ping"
    assert await actor_proxy(client, Ping, "a").plain() == "ping"
