"""Typed service proxies and serve(), against a real nats-server."""

from __future__ import annotations

from typing import Protocol

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

import conat
from conat import RemoteError

pytestmark = pytest.mark.anyio


class Vector(msgspec.Struct, frozen=True):
    x: float
    y: float


class Geometry(Protocol):
    __conat_namespace__ = "geo"

    async def add(self, a: Vector, b: Vector) -> Vector: ...
    async def scale(self, v: Vector, *, factor: float = 2.0) -> Vector: ...
    async def fail(self, code: str) -> None: ...
    async def names(self) -> list[str]: ...


class GeometryImpl:
    __conat_namespace__ = "geo"

    def __init__(self) -> None:
        self.calls = 0

    async def add(self, a: Vector, b: Vector) -> Vector:
        self.calls += 1
        return Vector(a.x + b.x, a.y + b.y)

    async def scale(self, v: Vector, *, factor: float = 2.0) -> Vector:
        return Vector(v.x * factor, v.y * factor)

    async def fail(self, code: str) -> None:
        if code == "plain":
            raise ValueError("not a vector")
        raise conat.RemoteError(code, "failed on purpose")

    async def names(self) -> list[str]:
        return ["add", "scale"]

    def _private(self) -> None:  # never exposed
        raise AssertionError


async def test_typed_proxy_round_trip(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        impl = GeometryImpl()
        await c.serve("svc.geo", impl)
        geo = c.service(Geometry, "svc.geo")
        result = await geo.add(Vector(1, 2), Vector(3, 4))
        assert result == Vector(4, 6) and isinstance(result, Vector)
        assert await geo.scale(Vector(1, 1), factor=3) == Vector(3, 3)
        assert await geo.scale(Vector(1, 1)) == Vector(2, 2)
        assert await geo.names() == ["add", "scale"]
        assert impl.calls == 1


async def test_wire_shape_is_name_args_kwargs(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        await c.serve("svc.geo2", GeometryImpl())
        reply = await c.request(
            "svc.geo2", {"name": "geo.add", "args": [{"x": 1, "y": 1}, {"x": 2, "y": 2}], "kwargs": {}}
        )
        assert reply.data == {"x": 3.0, "y": 3.0}


async def test_errors_reach_the_caller_with_codes_and_service_survives(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        await c.serve("svc.geo3", GeometryImpl())
        geo = c.service(Geometry, "svc.geo3")
        with pytest.raises(RemoteError) as e:
            await geo.fail("EPERM")
        assert e.value.code == "EPERM"
        with pytest.raises(RemoteError) as e:
            await geo.fail("plain")
        assert e.value.code == 500 and "ValueError" in e.value.remote_message
        # unknown method
        with pytest.raises(RemoteError) as e:
            await c.request("svc.geo3", {"name": "geo.nope", "args": []})
        assert e.value.code == 404
        # private method is not reachable
        with pytest.raises(RemoteError) as e:
            await c.request("svc.geo3", {"name": "geo._private"})
        assert e.value.code == 404
        # wrong argument types and counts
        with pytest.raises(RemoteError) as e:
            await c.request("svc.geo3", {"name": "geo.add", "args": [{"x": "a", "y": 1}, {"x": 1, "y": 1}]})
        assert e.value.code == 400 and "'a'" in e.value.remote_message
        with pytest.raises(RemoteError) as e:
            await c.request("svc.geo3", {"name": "geo.add", "args": [1]})
        assert e.value.code == 400
        # not an RPC body at all
        with pytest.raises(RemoteError) as e:
            await c.request("svc.geo3", "garbage")
        assert e.value.code == 400
        # still alive
        assert await geo.add(Vector(0, 0), Vector(1, 1)) == Vector(1, 1)


async def test_unknown_proxy_attribute_is_attribute_error(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        geo = c.service(Geometry, "svc.geo4")
        with pytest.raises(AttributeError):
            geo.nonexistent  # noqa: B018


async def test_error_replies_carry_the_nats_micro_error_headers(nats_server) -> None:
    # Regression: conat error replies had only Conat-Error, so NATS micro clients (the official
    # JavaScript services client) took them for successes.
    async with await conat.connect(nats_server.url) as c:
        await c.serve("svc.geo-micro", GeometryImpl())
        foreign = await nats.connect(nats_server.url)
        try:
            body = msgspec.json.encode({"name": "geo.nope"})
            reply = await foreign.request("svc.geo-micro", body, headers={"Conat-Encoding": "json"}, timeout=5)
            assert reply.headers is not None
            assert reply.headers["Nats-Service-Error-Code"] == "404" and reply.headers["Conat-Error"] == "404"
            assert "geo.nope" in reply.headers["Nats-Service-Error"]
            body = msgspec.json.encode({"name": "geo.fail", "args": ["ENOENT"]})
            reply = await foreign.request("svc.geo-micro", body, headers={"Conat-Encoding": "json"}, timeout=5)
            assert reply.headers is not None  # a symbolic code is 500 for micro, kept in Conat-Error
            assert reply.headers["Nats-Service-Error-Code"] == "500" and reply.headers["Conat-Error"] == "ENOENT"
            assert reply.headers["Nats-Service-Error"] == "failed on purpose"
        finally:
            await foreign.close()


async def test_a_micro_error_reply_from_another_service_is_a_remote_error(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        foreign = await nats.connect(nats_server.url)
        try:

            async def micro_service(msg: Msg) -> None:
                headers = {"Nats-Service-Error": "teapot", "Nats-Service-Error-Code": "418"}
                await msg.respond(b"") if msg.data == b"ok" else await foreign.publish(msg.reply, b"", headers=headers)

            await foreign.subscribe("svc.micro", cb=micro_service)
            await foreign.flush()
            with pytest.raises(RemoteError) as e:
                await c.request("svc.micro", b"x", encoding="raw", timeout=5)
            assert e.value.code == 418 and e.value.remote_message == "teapot"
            assert (await c.request("svc.micro", b"ok", encoding="raw", timeout=5)).raw == b""
        finally:
            await foreign.close()


async def test_a_json_body_without_its_header_gets_a_clear_400(nats_server) -> None:
    # Regression: the 400 said only that msgpack could not decode it.
    async with await conat.connect(nats_server.url) as c:
        await c.serve("svc.geo-json", GeometryImpl())
        foreign = await nats.connect(nats_server.url)
        try:
            reply = await foreign.request("svc.geo-json", b'{"name": "geo.names"}', timeout=5)
            assert reply.headers is not None and reply.headers["Conat-Error"] == "400"
            assert b"Conat-Encoding: json" in reply.data
            ok = await foreign.request(
                "svc.geo-json", b'{"name": "geo.names"}', headers={"Conat-Encoding": "json"}, timeout=5
            )
            # the reply comes in the caller's encoding, and says so
            assert ok.headers is not None and ok.headers["Conat-Encoding"] == "json"
            assert msgspec.json.decode(ok.data) == ["add", "scale"]
        finally:
            await foreign.close()


async def test_proxy_headers_may_carry_extension_headers_but_not_the_bus_own(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        seen: list[dict[str, str]] = []

        async def record(msg: conat.Message) -> None:
            seen.append(msg.raw_headers)
            await msg.respond(["add"])

        await c.subscribe("svc.geo-ext", callback=record)
        geo = c.service(Geometry, "svc.geo-ext", headers=lambda: {"Conat-Chain": "a/b"})
        assert await geo.names() == ["add"]
        assert seen[0]["Conat-Chain"] == "a/b"
        bad = c.service(Geometry, "svc.geo-ext", headers=lambda: {"Conat-Error": "500"})
        with pytest.raises(conat.PayloadError):
            await bad.names()

