"""Keyed (virtual) actors on a real nats-server: activation, order, concurrency, passivation, timers,
mailbox overflow, bad input."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

import conat
from actors import NO_REPLY, Actor, ActorDefinitionError, ActorSystem, Reply, actor_proxy
from conat import RemoteError, RpcRequest
from conat._server import NatsServer
from conat.testing import FakeClock

from .conftest import eventually

pytestmark = pytest.mark.anyio


class Point(msgspec.Struct, frozen=True):
    x: int
    y: int


EVENTS: list[tuple[str, str]] = []


class Counter(Actor, subject="counter.*", idle=60.0, max_buffer=4):
    """Counts per key."""

    def __init__(self) -> None:
        self.total = 0

    async def on_activate(self) -> None:
        EVENTS.append(("activate", self.key))

    async def on_deactivate(self) -> None:
        EVENTS.append(("deactivate", self.key))

    async def add(self, n: int) -> int:
        self.total += n
        return self.total

    async def move(self, p: Point, dx: int = 1) -> Point:
        return Point(p.x + dx, p.y)

    async def fail(self, code: str) -> None:
        if code == "plain":
            raise ValueError("bad value")
        raise RemoteError(code, "chosen failure")

    async def hold(self, gate: str) -> str:
        await GATES[gate].wait()
        return gate

    async def leave(self) -> None:
        self.passivate()


GATES: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    EVENTS.clear()
    GATES.clear()


async def test_one_instance_per_key_with_typed_calls(system: ActorSystem, client: conat.Client) -> None:
    await system.start(Counter)
    a, b = actor_proxy(client, Counter, "a"), actor_proxy(client, Counter, "b")
    assert await a.add(2) == 2
    assert await a.add(3) == 5
    assert await b.add(10) == 10
    assert await a.move(Point(1, 2), dx=5) == Point(6, 2)
    assert [e for e in EVENTS if e[0] == "activate"] == [("activate", "a"), ("activate", "b")]
    stats = system.runtime(Counter).statistics()
    assert stats.active_keys == 2
    figures = {e.name: e.num_requests for e in stats.endpoints}  # every endpoint, used or not
    assert figures == {"add": 3, "move": 1, "fail": 0, "hold": 0, "leave": 0}


class Journal(Actor, subject="journal.*", max_buffer=1000):
    async def note(self, sender: str, i: int) -> None:
        EVENTS.append((sender, str(i)))


async def test_order_per_key_under_concurrent_senders(
    system: ActorSystem, client: conat.Client, nats_server: NatsServer
) -> None:
    await system.start(Journal)
    senders = [await conat.connect(nats_server.url) for _ in range(3)]
    try:

        async def send(n: int, c: conat.Client) -> None:
            for i in range(200):
                await c.publish("journal.k", RpcRequest("note", [f"s{n}", i]))
            await c.flush()

        await asyncio.gather(*(send(n, c) for n, c in enumerate(senders)))
        await eventually(lambda: len(EVENTS) == 600, "all notes processed")
    finally:
        for c in senders:
            await c.aclose()
    for n in range(3):
        assert [int(i) for s, i in EVENTS if s == f"s{n}"] == list(range(200))


async def test_keys_run_concurrently(system: ActorSystem, client: conat.Client) -> None:
    await system.start(Counter)
    GATES["g"] = asyncio.Event()
    held = asyncio.create_task(actor_proxy(client, Counter, "slow").hold("g"))
    await eventually(lambda: ("activate", "slow") in EVENTS, "slow key active")
    # key "slow" is busy in a turn; another key still answers at once
    assert await actor_proxy(client, Counter, "fast").add(1) == 1
    assert not held.done()
    GATES["g"].set()
    assert await held == "g"


async def test_idle_passivation_and_reactivation_on_a_fake_clock(
    system: ActorSystem, client: conat.Client, clock: FakeClock
) -> None:
    await system.start(Counter)
    proxy = actor_proxy(client, Counter, "p")
    assert await proxy.add(5) == 5
    await clock.advance(30)
    assert ("deactivate", "p") not in EVENTS
    await clock.advance(60)
    await eventually(lambda: ("deactivate", "p") in EVENTS, "idle passivation")
    assert system.runtime(Counter).statistics().active_keys == 0
    assert await proxy.add(1) == 1  # a fresh activation: state came from on_activate (none here)
    assert EVENTS.count(("activate", "p")) == 2


async def test_explicit_passivate(system: ActorSystem, client: conat.Client) -> None:
    await system.start(Counter)
    proxy = actor_proxy(client, Counter, "x")
    await proxy.add(1)
    await proxy.leave()
    await eventually(lambda: ("deactivate", "x") in EVENTS, "passivated after the turn")
    assert await proxy.add(1) == 1


class Capped(Actor, subject="capped.*", max_active=2, idle=None):
    async def on_deactivate(self) -> None:
        EVENTS.append(("deactivate", self.key))

    async def ping(self) -> str:
        return self.key


async def test_lru_cap_passivates_the_least_recently_used(system: ActorSystem, client: conat.Client) -> None:
    await system.start(Capped)
    for key in ("k1", "k2", "k1", "k3"):
        assert await actor_proxy(client, Capped, key).ping() == key
    await eventually(lambda: ("deactivate", "k2") in EVENTS, "k2 evicted")
    assert ("deactivate", "k1") not in EVENTS
    assert system.runtime(Capped).statistics().active_keys == 2


async def test_full_mailbox_answers_busy_and_counts(system: ActorSystem, client: conat.Client) -> None:
    await system.start(Counter)
    GATES["g"] = asyncio.Event()
    proxy = actor_proxy(client, Counter, "busy")
    first = asyncio.create_task(proxy.hold("g"))
    await eventually(lambda: ("activate", "busy") in EVENTS, "first turn running")
    queued = [asyncio.create_task(proxy.add(1)) for _ in range(4)]  # max_buffer=4 fills
    await eventually(
        lambda: (s := system.runtime(Counter).mailbox_statistics("busy")) is not None and s.buffered == 4,
        "mailbox full",
    )
    with pytest.raises(RemoteError) as e:
        await proxy.add(1)
    assert e.value.code == conat.BUSY
    GATES["g"].set()
    await first
    assert sorted(await asyncio.gather(*queued)) == [1, 2, 3, 4]
    assert system.runtime(Counter).statistics().dropped == 1


async def test_bad_input_gets_coded_errors_and_the_actor_lives(
    system: ActorSystem, client: conat.Client
) -> None:
    await system.start(Counter)
    proxy = actor_proxy(client, Counter, "e")
    with pytest.raises(RemoteError) as e:
        await client.request("counter.e", RpcRequest("nope"))
    assert e.value.code == 404
    with pytest.raises(RemoteError) as e:
        await client.request("counter.e", RpcRequest("add", ["not a number"]))
    assert e.value.code == 400
    with pytest.raises(RemoteError) as e:
        await client.request("counter.e", b"\xc1 garbage", encoding="raw")
    assert e.value.code == 400
    with pytest.raises(RemoteError) as e:
        await proxy.fail("plain")
    assert e.value.code == 500
    assert "bad value" in e.value.remote_message
    with pytest.raises(RemoteError) as e:
        await proxy.fail("ENOENT")
    assert e.value.code == "ENOENT"
    assert await proxy.add(7) == 7
    stats = system.runtime(Counter).statistics()
    assert stats.crashes == 0
    assert {e.name: e.num_errors for e in stats.endpoints}["fail"] == 2


async def test_oversized_request_gets_413_and_the_actor_lives(nats_server: NatsServer) -> None:
    async with (
        await conat.connect(nats_server.url, max_reassembly_bytes=2 * 1024 * 1024) as server_side,
        await conat.connect(nats_server.url) as caller,
        ActorSystem(server_side) as system,
    ):
        await system.start(Counter)
        with pytest.raises(RemoteError) as e:
            await caller.request("counter.big", RpcRequest("add", ["x" * (4 * 1024 * 1024)]))
        assert e.value.code == 413
        assert await actor_proxy(caller, Counter, "big").add(1) == 1


class Ticker(Actor, subject="ticker.*", idle=None):
    def __init__(self) -> None:
        self.ticks = 0

    async def on_activate(self) -> None:
        self.timer(1.0, self.tick, period=1.0)

    async def tick(self) -> None:  # an endpoint too: harmless
        self.ticks += 1
        EVENTS.append(("tick", self.key))

    async def count(self) -> int:
        return self.ticks

    async def stop_ticking(self) -> None:
        self.passivate()


async def test_timers_tick_as_turns_and_die_with_the_activation(
    system: ActorSystem, client: conat.Client, clock: FakeClock
) -> None:
    await system.start(Ticker)
    proxy = actor_proxy(client, Ticker, "t")
    assert await proxy.count() == 0
    await clock.advance(3.5)
    await eventually(lambda: EVENTS.count(("tick", "t")) == 3, "three ticks")
    assert await proxy.count() == 3
    await proxy.stop_ticking()
    await eventually(lambda: system.runtime(Ticker).statistics().passivations == 1, "passivated")
    await clock.advance(5)
    await asyncio.sleep(0.05)
    assert EVENTS.count(("tick", "t")) == 3


async def test_unkeyed_actor_shares_load_in_a_queue_group(nats_server: NatsServer) -> None:
    class Worker(Actor, subject="work.queue", queue="workers"):
        async def job(self, n: int) -> str:
            return ACTIVE_SYSTEM[id(self._activation.runtime)]

    ACTIVE_SYSTEM: dict[int, str] = {}
    async with (
        await conat.connect(nats_server.url) as c1,
        await conat.connect(nats_server.url) as c2,
        ActorSystem(c1) as s1,
        ActorSystem(c2) as s2,
    ):
        ACTIVE_SYSTEM[id(await s1.start(Worker))] = "one"
        ACTIVE_SYSTEM[id(await s2.start(Worker))] = "two"
        answers = [await actor_proxy(c1, Worker).job(i) for i in range(60)]
    assert set(answers) == {"one", "two"}


def test_definition_errors_name_what_is_wrong() -> None:
    with pytest.raises(ActorDefinitionError, match="name"):

        class BadName(Actor, subject="x.*", name="has space"):
            pass

    with pytest.raises(ActorDefinitionError, match="semver"):

        class BadVersion(Actor, subject="x.*", version="1"):
            pass

    with pytest.raises(ActorDefinitionError, match="subject"):

        class BadSubject(Actor, subject="x..y"):
            pass

    with pytest.raises(ActorDefinitionError, match="key"):
        Counter.spec().subject_for("a.b")
    assert Counter.spec().subject_for("abc") == "counter.abc"
    assert Counter.spec().key_of("counter.abc") == "abc"


async def test_start_refuses_duplicates_and_non_actors(system: ActorSystem) -> None:
    await system.start(Counter)
    with pytest.raises(ActorDefinitionError, match="already"):
        await system.start(Counter)
    with pytest.raises(ActorDefinitionError):
        await system.start(int)  # type: ignore[arg-type]


class SlowExit(Actor, subject="slowexit.*", idle=None):
    async def on_activate(self) -> None:
        EVENTS.append(("activate", self.key))

    async def on_deactivate(self) -> None:
        EVENTS.append(("deactivating", self.key))
        await GATES["exit"].wait()
        EVENTS.append(("deactivated", self.key))

    async def leave(self) -> None:
        self.passivate()

    async def who(self) -> int:
        return EVENTS.count(("activate", self.key))


async def test_a_message_during_passivation_waits_and_reactivates(
    system: ActorSystem, client: conat.Client
) -> None:
    await system.start(SlowExit)
    GATES["exit"] = asyncio.Event()
    proxy = actor_proxy(client, SlowExit, "s")
    await proxy.leave()
    await eventually(lambda: ("deactivating", "s") in EVENTS, "passivation started")
    call = asyncio.create_task(proxy.who())
    await eventually(
        lambda: (st := system.runtime(SlowExit).mailbox_statistics("s")) is not None and st.buffered == 1,
        "the call waits in the mailbox",
    )
    assert not call.done()
    GATES["exit"].set()
    assert await call == 2  # served by a fresh activation, after the old one finished deactivating
    assert EVENTS.index(("deactivated", "s")) < len(EVENTS) - 1
    assert EVENTS[-1] == ("activate", "s")


class Raw(Actor, subject="rawreply.*"):
    async def receive(self, msg: conat.Message) -> object:
        if msg.data == "stream":
            for i in range(3):
                await msg.respond(i)
            await msg.end()
            return NO_REPLY
        return Reply(b"plain bytes", encoding="raw", headers={"x-kind": "raw"})


async def test_a_handler_chooses_its_reply_encoding_or_answers_by_itself(
    system: ActorSystem, client: conat.Client
) -> None:
    await system.start(Raw)
    reply = await client.request("rawreply.k", "hi")
    assert (reply.raw, reply.headers) == (b"plain bytes", {"x-kind": "raw"})
    streamed = [m.data async for m in client.request_many("rawreply.k", "stream", timeout=5)]
    assert streamed == [0, 1, 2]


class Answers(Actor, subject="answers.*"):
    async def receive(self, msg: conat.Message) -> object:
        if msg.data == "reply":
            return Reply({"via": "Reply"}, headers={"x-kind": "chosen headers"})  # no encoding chosen
        return {"got": msg.data}


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_an_actor_replies_in_the_callers_encoding(
    system: ActorSystem, client: conat.Client, encoding: str
) -> None:
    await system.start(Counter)
    await system.start(Answers)
    reply = await client.request("counter.enc", RpcRequest("add", [2]), encoding=encoding)
    assert (reply.encoding, reply.data) == (encoding, 2)
    reply = await client.request("answers.k", "plain", encoding=encoding)
    assert (reply.encoding, reply.data) == (encoding, {"got": "plain"})
    reply = await client.request("answers.k", "reply", encoding=encoding)
    assert (reply.encoding, reply.data, reply.headers) == (
        encoding,
        {"via": "Reply"},
        {"x-kind": "chosen headers"},
    )
    if encoding == "json":  # readable by a client that knows only JSON
        assert msgspec.json.decode(reply.raw) == {"via": "Reply"}
