"""NATS micro discovery (``$SRV``) of typed services (``client.serve``) and of any MicroService,
against a real nats-server; the shapes are checked against the micro JSON schemas."""

from __future__ import annotations

from typing import Any

import pytest

import conat
from conat import InfoResponse, MicroService, PingResponse, RpcRequest, StatsResponse
from conat._micro import micro_name
from conat._server import NatsServer
from subjects import Permissions

from ..micro_schemas import SCHEMAS, validate

pytestmark = pytest.mark.anyio


class Geometry:
    """Adds vectors."""

    __conat_namespace__ = "geo"

    async def add(self, a: int, b: int) -> int:
        return a + b

    async def fail(self) -> None:
        raise ValueError("on purpose")


async def _gather(client: conat.Client, subject: str) -> list[Any]:
    try:
        return [m.data async for m in client.request_many(subject, None, timeout=1.0, idle_timeout=0.3)]
    except (conat.NoResponders, conat.Timeout):
        return []


async def test_a_typed_service_answers_srv_in_the_micro_shapes(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as server, await conat.connect(nats_server.url) as caller:
        sub = await server.serve("micro.geo", Geometry(), queue="geo-workers")
        assert await caller.request("micro.geo", RpcRequest("geo.add", [1, 2])) is not None
        with pytest.raises(conat.RemoteError):
            await caller.request("micro.geo", RpcRequest("geo.fail"))
        for bad in (RpcRequest("geo.nope"), RpcRequest("nope")):  # 404: no endpoint's request
            with pytest.raises(conat.RemoteError):
                await caller.request("micro.geo", bad)
        with pytest.raises(conat.RemoteError):  # 400: an undecodable body
            await caller.request("micro.geo", b"\xc1", encoding="raw")

        bodies = {verb: await _gather(caller, f"$SRV.{verb}.Geometry") for verb in ("PING", "INFO", "STATS")}
        for verb, found in bodies.items():
            assert len(found) == 1, (verb, found)
            validate(found[0], SCHEMAS[verb])
        info, stats = bodies["INFO"][0], bodies["STATS"][0]
        assert info["description"] == "Adds vectors."
        assert [e["name"] for e in info["endpoints"]] == ["geo-add", "geo-fail"]
        assert [e["metadata"]["method"] for e in info["endpoints"]] == ["geo.add", "geo.fail"]
        assert {e["queue_group"] for e in info["endpoints"]} == {"geo-workers"}
        # INFO and STATS list the same endpoints: bad requests belong to none of them
        assert [e["name"] for e in stats["endpoints"]] == [e["name"] for e in info["endpoints"]]
        add, fail = stats["endpoints"]
        assert (add["num_requests"], add["num_errors"]) == (1, 0)
        assert (fail["num_requests"], fail["num_errors"]) == (1, 1)
        assert fail["last_error"] == "ValueError: on purpose"
        assert add["data"]["bad_requests"] == 3
        # the id addresses this instance alone; the typed responses decode the same bodies
        ident = info["id"]
        reply = await caller.request(f"$SRV.INFO.Geometry.{ident}", None)
        assert reply.decode(InfoResponse).endpoints[0].subject == "micro.geo"
        assert (await caller.request(f"$SRV.PING.Geometry.{ident}", None)).decode(PingResponse).id == ident
        assert (await caller.request(f"$SRV.STATS.Geometry.{ident}", None)).decode(
            StatsResponse
        ).name == "Geometry"

        # the service lives as long as its subscription
        await sub.unsubscribe()
        assert await _gather(caller, "$SRV.PING.Geometry") == []


async def test_every_service_of_a_connection_answers_a_broadcast_ping(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as server, await conat.connect(nats_server.url) as caller:
        one = await server.serve("micro.one", Geometry())
        two = await server.serve("micro.two", Geometry())
        pings = await _gather(caller, "$SRV.PING")
        mine = [p for p in pings if p["name"] == "Geometry"]
        assert len(mine) == 2 and len({p["id"] for p in mine}) == 2
        for p in mine:
            validate(p, SCHEMAS["PING"])
        await one.unsubscribe()
        await two.unsubscribe()


async def test_a_connection_that_may_not_subscribe_to_srv_serves_undiscoverable(
    nats_server: NatsServer,
) -> None:
    grant = Permissions(publish_allow=None, subscribe_allow=None, subscribe_deny=("$SRV.>",))
    async with (
        await conat.connect(nats_server.url, permissions=grant) as server,
        await conat.connect(nats_server.url) as caller,
    ):
        await server.serve("micro.hidden", Geometry())
        assert (await caller.request("micro.hidden", RpcRequest("geo.add", [2, 3]))).data == 5
        assert await _gather(caller, "$SRV.PING.Geometry") == []  # and nothing failed


async def test_advertise_and_withdraw_a_service_by_hand(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as server, await conat.connect(nats_server.url) as caller:
        service = MicroService(
            "custom", "custom.subject", ["get"], version="2.0.1", metadata={"k": "v"}, data=lambda: {"x": 1}
        )
        service.record("get", 1000, None)
        service.record("get", 3000, RuntimeError("x"))
        service.record("other", 5, None)
        await service.advertise(server)
        with pytest.raises(ValueError, match="already advertised"):
            await service.advertise(server)
        stats = (await caller.request("$SRV.STATS.custom", None)).data
        validate(stats, SCHEMAS["STATS"])
        (get,) = stats["endpoints"]
        assert (get["num_requests"], get["num_errors"], get["processing_time"]) == (2, 1, 4000)
        assert get["average_processing_time"] == 2000
        assert get["data"] == {"bad_requests": 1, "x": 1}
        assert stats["metadata"] == {"k": "v"} and stats["version"] == "2.0.1"
        await service.withdraw()
        await service.withdraw()  # idempotent
        assert await _gather(caller, "$SRV.PING.custom") == []


def test_service_descriptions_are_validated() -> None:
    with pytest.raises(ValueError, match="name"):
        MicroService("has space", "s", [])
    with pytest.raises(ValueError, match="version"):
        MicroService("ok", "s", [], version="1")
    with pytest.raises(ValueError, match="id"):
        MicroService("ok", "s", [], service_id="a.b")
    assert micro_name("geo.add") == "geo-add"
    assert micro_name("é") == "-"
    assert MicroService("ok", "s", ["a.b", "c"]).info().endpoints[0].name == "a-b"
