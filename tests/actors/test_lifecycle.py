"""Graceful shutdown with requests in flight, $SRV discovery in the NATS micro shapes, reminders."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

import conat
from actors import Actor, ActorSystem, MemoryReminderStore, actor_proxy
from conat import RemoteError, RpcRequest
from conat.testing import FakeClock

from ..micro_schemas import INFO_SCHEMA, PING_SCHEMA, STATS_SCHEMA
from ..micro_schemas import validate as _validate
from .conftest import eventually

pytestmark = pytest.mark.anyio

DEACTIVATED: list[str] = []
RELEASE: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    DEACTIVATED.clear()
    RELEASE.clear()


class Worker(Actor, subject="worker.*", description="does slow work"):
    async def work(self, n: int) -> int:
        await asyncio.sleep(0.02)
        return n

    async def stuck(self) -> None:
        await asyncio.Event().wait()

    async def on_deactivate(self) -> None:
        DEACTIVATED.append(self.key)


async def test_stop_finishes_in_flight_and_queued_turns(nats_server: Any) -> None:
    async with (
        await conat.connect(nats_server.url) as server_side,
        await conat.connect(nats_server.url) as caller,
    ):
        system = ActorSystem(server_side)
        await system.start(Worker)
        proxy = actor_proxy(caller, Worker, "w")
        calls = [asyncio.create_task(proxy.work(i)) for i in range(10)]
        await eventually(lambda: system.runtime(Worker).statistics().buffered > 0, "requests queued")
        await system.stop(timeout=5)
        assert await asyncio.gather(*calls) == list(range(10))
        assert DEACTIVATED == ["w"]
        # intake is closed: a new call fails fast instead of hanging
        with pytest.raises(conat.NoResponders):
            await proxy.work(1)


async def test_stop_past_the_deadline_answers_everyone_with_503(nats_server: Any) -> None:
    async with (
        await conat.connect(nats_server.url) as server_side,
        await conat.connect(nats_server.url) as caller,
    ):
        system = ActorSystem(server_side)
        await system.start(Worker)
        proxy = actor_proxy(caller, Worker, "w", timeout=10)
        running = asyncio.create_task(proxy.stuck())
        queued = [asyncio.create_task(proxy.work(i)) for i in range(3)]
        await eventually(lambda: system.runtime(Worker).statistics().buffered == 3, "three queued")
        await system.stop(timeout=0.2)
        for call in [running, *queued]:
            with pytest.raises(RemoteError) as e:
                await call
            assert e.value.code == conat.UNAVAILABLE
        assert system.runtime(Worker).statistics().rejected_stopping == 3


class Other(Actor, subject="other.thing", version="2.1.0-rc.1"):
    async def hello(self) -> str:
        return "hi"


async def test_srv_ping_info_stats_answer_in_the_micro_shapes(
    system: ActorSystem, client: conat.Client
) -> None:
    await system.start(Worker)
    await system.start(Other)
    assert await actor_proxy(client, Worker, "a").work(3) == 3

    pings = [m.data async for m in client.request_many("$SRV.PING", None, timeout=1.0, idle_timeout=0.3)]
    mine = [p for p in pings if p["id"].startswith(system.instance_id)]
    assert sorted(p["name"] for p in mine) == ["Other", "Worker"]
    for p in mine:
        _validate(p, PING_SCHEMA)

    info = (await client.request("$SRV.INFO.Worker", None)).data
    _validate(info, INFO_SCHEMA)
    assert info["description"] == "does slow work"
    assert {e["name"] for e in info["endpoints"]} == {"work", "stuck"}
    assert all(e["subject"] == "worker.*" for e in info["endpoints"])

    stats = (await client.request(f"$SRV.STATS.Worker.{info['id']}", None)).data
    _validate(stats, STATS_SCHEMA)
    assert datetime.fromisoformat(stats["started"]).tzinfo is not None  # RFC 3339 with a zone
    work = next(e for e in stats["endpoints"] if e["name"] == "work")
    assert work["num_requests"] == 1
    assert work["processing_time"] >= work["average_processing_time"] > 0
    assert work["data"]["active_keys"] == 1

    other = (await client.request("$SRV.INFO.Other", None)).data
    _validate(other, INFO_SCHEMA)
    assert other["version"] == "2.1.0-rc.1"
    # a name that is not ours gets no answer from this system
    with pytest.raises(conat.Timeout):
        await client.request("$SRV.PING.Nobody", None, timeout=0.5)


class Echoing(Actor, subject="echoing.*"):
    """Answers with what it got (its own receive: one endpoint, "receive")."""

    async def receive(self, msg: conat.Message) -> object:
        return msg.data

    async def unused(self) -> None:  # not an endpoint: receive handles everything
        pass


async def test_srv_stats_lists_exactly_the_endpoints_info_lists(
    system: ActorSystem, client: conat.Client
) -> None:
    await system.start(Worker)
    await system.start(Echoing)
    assert await actor_proxy(client, Worker, "a").work(1) == 1
    for bad in (RpcRequest("nope"), RpcRequest("work", ["not an int", 2])):
        with pytest.raises(RemoteError):
            await client.request("worker.a", bad)
    with pytest.raises(RemoteError):
        await client.request("worker.a", b"\xc1", encoding="raw")
    assert (await client.request("echoing.k", "hi")).data == "hi"
    for name, endpoints in (("Worker", ["stuck", "work"]), ("Echoing", ["receive"])):
        info = (await client.request(f"$SRV.INFO.{name}", None)).data
        stats = (await client.request(f"$SRV.STATS.{name}", None)).data
        _validate(stats, STATS_SCHEMA)
        assert [e["name"] for e in info["endpoints"]] == endpoints
        assert [e["name"] for e in stats["endpoints"]] == endpoints  # no invented "unknown"
    work = next(e for e in stats_of(await client.request("$SRV.STATS.Worker", None)) if e["name"] == "work")
    assert (work["num_requests"], work["num_errors"]) == (2, 1)  # the call with bad arguments named it
    assert work["data"]["bad_requests"] == 2  # an unknown method and an undecodable body
    assert system.runtime(Worker).statistics().bad_requests == 2
    (receive,) = stats_of(await client.request("$SRV.STATS.Echoing", None))
    assert receive["num_requests"] == 1


def stats_of(reply: conat.Message) -> list[dict[str, Any]]:
    endpoints: list[dict[str, Any]] = reply.data["endpoints"]
    return endpoints


class Remindful(Actor, subject="remind.*", idle=10.0):
    async def arm(self, delay: float, period: float | None = None) -> None:
        await self.reminder("wake", delay, period=period)

    async def disarm(self) -> None:
        await self.cancel_reminder("wake")

    async def on_reminder(self, name: str) -> None:
        DEACTIVATED.append(f"reminded:{self.key}:{name}")


async def test_reminders_activate_the_key_and_outlive_the_activation(
    client: conat.Client, clock: FakeClock
) -> None:
    store = MemoryReminderStore()
    async with ActorSystem(client, clock=clock, reminders=store) as system:
        await system.start(Remindful)
        proxy = actor_proxy(client, Remindful, "r")
        await proxy.arm(60.0, period=60.0)
        await clock.advance(30)  # idle=10: the key is passivated long before the reminder
        await eventually(lambda: system.runtime(Remindful).statistics().active_keys == 0, "passivated")
        await clock.advance(31)
        await eventually(lambda: DEACTIVATED == ["reminded:r:wake"], "first reminder")
        await clock.advance(60)
        await eventually(lambda: DEACTIVATED.count("reminded:r:wake") == 2, "periodic reminder")
        assert len(await store.load("Remindful")) == 1
        await proxy.disarm()
        await clock.advance(120)
        await asyncio.sleep(0.05)
        assert DEACTIVATED.count("reminded:r:wake") == 2
        assert await store.load("Remindful") == []


async def test_reminders_without_a_store_are_refused_with_a_clear_error(
    system: ActorSystem, client: conat.Client
) -> None:
    await system.start(Remindful)
    with pytest.raises(RemoteError, match="ReminderStore"):
        await actor_proxy(client, Remindful, "r").arm(1.0)
