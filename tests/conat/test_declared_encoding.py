"""A subscription's declared encoding: what arrives without a ``Conat-Encoding`` header is read as
the subscriber declared (``subscribe(..., encoding="raw")``), so a publisher that agreed on it sends
no header at all (``publish(..., label=False)``), and foreign clients interoperate both ways."""

from __future__ import annotations

import nats
import pytest

import conat
from conat import Message, PayloadError
from conat._server import NatsServer

pytestmark = pytest.mark.anyio


async def test_an_unlabelled_raw_message_reaches_a_raw_subscription_as_its_bytes(
    nats_server: NatsServer,
) -> None:
    async with await conat.connect(nats_server.url) as pub, await conat.connect(nats_server.url) as sub:
        raw_sub = await sub.subscribe("declared.raw", encoding="raw")
        plain_sub = await sub.subscribe("declared.raw")
        await pub.publish("declared.raw", b"\x01\xff", encoding="raw", label=False)
        await pub.publish("declared.raw", {"a": 1}, encoding="json")  # a label still wins

        first = await raw_sub.next(5)
        assert first.raw_headers == {}  # nothing on the wire but the bytes
        assert first.encoding == "raw"
        assert first.data == b"\x01\xff"
        assert first.decode(bytes) == b"\x01\xff"
        second = await raw_sub.next(5)
        assert (second.encoding, second.data) == ("json", {"a": 1})

        # A subscriber that declared nothing reads an unlabelled body as msgpack, as before.
        assert (await plain_sub.next(5)).encoding == "msgpack"


async def test_label_true_keeps_the_header_for_every_receiver(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as pub, await conat.connect(nats_server.url) as sub:
        s = await sub.subscribe("declared.labelled")
        await pub.publish("declared.labelled", b"abc", encoding="raw")
        msg = await s.next(5)
        assert msg.raw_headers == {"Conat-Encoding": "raw"}
        assert msg.data == b"abc"


async def test_a_chunked_unlabelled_message_is_read_in_the_declared_encoding(
    nats_server: NatsServer,
) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB: chunked on a 1 MiB max_payload
    async with await conat.connect(nats_server.url) as pub, await conat.connect(nats_server.url) as sub:
        s = await sub.subscribe("declared.big", encoding="raw")
        await pub.publish("declared.big", payload, encoding="raw", label=False)
        msg = await s.next(10)
        assert msg.encoding == "raw"
        assert msg.data == payload


async def test_a_foreign_publisher_needs_no_header_for_a_raw_subscription(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        async with await conat.connect(nats_server.url) as sub:
            s = await sub.subscribe("declared.foreign.in", encoding="raw")
            await nc.publish("declared.foreign.in", b"\x93plain bytes")  # 0x93: a msgpack array head
            await nc.flush()
            msg = await s.next(5)
            assert msg.data == b"\x93plain bytes"
    finally:
        await nc.close()


async def test_a_foreign_subscriber_gets_unlabelled_bytes_without_headers(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        foreign = await nc.subscribe("declared.foreign.out")
        await nc.flush()
        async with await conat.connect(nats_server.url) as pub:
            await pub.publish("declared.foreign.out", b"bytes", encoding="raw", label=False)
            await pub.flush()
        msg = await foreign.next_msg(timeout=5)
        assert msg.data == b"bytes"
        assert not msg.headers
    finally:
        await nc.close()


async def test_a_raw_subscription_answers_an_unlabelled_request_in_raw(nats_server: NatsServer) -> None:
    """The reply follows the request's encoding, here the declared one (conat.reply_encoding)."""
    async with await conat.connect(nats_server.url) as server, await conat.connect(nats_server.url) as caller:

        async def echo(msg: Message) -> None:
            await msg.respond(msg.data, encoding=conat.reply_encoding(msg, msg.data))

        await server.subscribe("declared.echo", encoding="raw", callback=echo)
        reply = await caller.request("declared.echo", b"ping", encoding="raw")
        assert (reply.encoding, reply.data) == ("raw", b"ping")


async def test_an_unknown_declared_encoding_is_refused(nats_server: NatsServer) -> None:
    async with await conat.connect(nats_server.url) as c:
        with pytest.raises(PayloadError, match="unknown encoding"):
            await c.subscribe("declared.bad", encoding="yaml")
