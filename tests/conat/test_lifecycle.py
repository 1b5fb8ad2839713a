"""Connecting, state, closing and surviving a nats-server restart."""

from __future__ import annotations

import asyncio
import gc

import pytest

import conat
from conat import BadURL, ClientState, ClosedError, ConnectError, Disconnected

pytestmark = pytest.mark.anyio


async def test_bad_urls_are_refused_clearly() -> None:
    for url in ["", "localhost:4222", "http://x:1", "nats://", "nats://h:99999"]:
        with pytest.raises(BadURL) as e:
            await conat.connect(url)
        assert e.value.code == 400


async def test_unreachable_server_is_connect_error() -> None:
    with pytest.raises(ConnectError) as e:
        await conat.connect("nats://127.0.0.1:1", connect_attempts=1, connect_timeout=0.5)
    assert e.value.code == "connect" and "127.0.0.1:1" in str(e.value)


async def test_no_url_and_no_local_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONAT_URL", raising=False)
    with pytest.raises(ConnectError, match="conat up"):
        await conat.connect()


async def test_url_from_environment(nats_server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONAT_URL", nats_server.url)
    async with await conat.connect() as c:
        assert c.state is ClientState.CONNECTED


async def test_closing_leaves_no_tasks_and_fails_pending_requests(nats_server) -> None:
    before = {t for t in asyncio.all_tasks()}
    c = await conat.connect(nats_server.url)

    async def silent(msg: conat.Message) -> None:
        return None

    await c.subscribe("close.silent", callback=silent)
    sub = await c.subscribe("close.iter")
    pending = asyncio.create_task(c.request("close.silent", 1, timeout=30))
    await asyncio.sleep(0.05)
    await c.aclose()
    with pytest.raises(ClosedError):
        await pending
    assert [m async for m in sub] == []
    assert c.state is ClientState.CLOSED
    with pytest.raises(ClosedError):
        await c.publish("x", 1)
    await asyncio.sleep(0.05)
    leftover = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
    assert not leftover, leftover
    await c.aclose()  # idempotent


async def test_unclosed_client_warns() -> None:
    c = conat.Client()
    c._state = ClientState.CONNECTED
    c._core.closing = False
    del c
    with pytest.warns(ResourceWarning):
        gc.collect()


async def test_state_callbacks_cannot_break_the_client(nats_server) -> None:
    async with await conat.connect(nats_server.url) as c:
        seen: list[ClientState] = []

        def bad(state: ClientState) -> None:
            raise RuntimeError("user bug")

        c.on_state_change(bad)
        c.on_state_change(seen.append)
        c._set_state(ClientState.RECONNECTING)
        c._set_state(ClientState.CONNECTED)
        assert seen == [ClientState.RECONNECTING, ClientState.CONNECTED]
        await c.publish("still.works", 1)


async def test_subscription_survives_kill_9_and_restart(fresh_nats_server) -> None:
    server = fresh_nats_server
    async with await conat.connect(server.url, reconnect_time_wait=0.1) as sub_client, await conat.connect(
        server.url, reconnect_time_wait=0.1
    ) as pub_client:
        states: list[ClientState] = []
        sub_client.on_state_change(states.append)
        sub = await sub_client.subscribe("survive.>")

        async def echo(msg: conat.Message) -> None:
            await msg.respond(msg.data)

        await sub_client.subscribe("survive.echo.svc", callback=echo)
        await pub_client.publish("survive.a", "before")
        assert (await sub.next(timeout=5)).data == "before"

        await server.kill()
        await asyncio.sleep(0.2)
        await server.restart()

        # Publish until the subscription is re-armed (core NATS drops what is sent meanwhile).
        got = None
        for i in range(100):
            await pub_client.publish("survive.a", f"after-{i}")
            try:
                got = await sub.next(timeout=0.1)
                break
            except TimeoutError:
                continue
        assert got is not None and got.data.startswith("after-")
        for _ in range(100):
            if sub_client.state is ClientState.CONNECTED:
                break
            await asyncio.sleep(0.02)
        assert ClientState.RECONNECTING in states and states[-1] is ClientState.CONNECTED
        reply = await pub_client.request("survive.echo.svc", "ping", timeout=5, wait_for_interest=True)
        assert reply.data == "ping"


async def test_dead_link_is_detected_within_seconds(fresh_nats_server) -> None:
    """A frozen server (SIGSTOP: the socket stays open, nothing answers) is noticed by pings."""
    import os
    import signal

    server = fresh_nats_server
    async with await conat.connect(server.url, ping_interval=0.2, max_outstanding_pings=2) as c:
        os.kill(server.pid, signal.SIGSTOP)
        try:
            for _ in range(100):  # pings every 0.2 s: noticed after ~0.6 s; give it 5 s
                if c.state is ClientState.RECONNECTING:
                    break
                await asyncio.sleep(0.05)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert c.state is not ClientState.CONNECTED, "the frozen link was never noticed"
        for _ in range(100):
            if c.state is ClientState.CONNECTED:
                break
            await asyncio.sleep(0.05)
        assert c.state is ClientState.CONNECTED


async def test_requests_in_flight_fail_at_once_when_the_link_drops(fresh_nats_server) -> None:
    # Regression: they waited their whole timeout (408); persist clients stalled 5-15 s per call.
    server = fresh_nats_server
    async with (
        await conat.connect(server.url, reconnect_time_wait=0.1) as responder,
        await conat.connect(server.url, reconnect_time_wait=0.1) as c,
    ):

        async def silent(msg: conat.Message) -> None:
            return None

        await responder.subscribe("inflight.silent", callback=silent)

        async def many() -> list[object]:
            return [m.data async for m in c.request_many("inflight.silent", 1, timeout=30)]

        calls = [asyncio.create_task(c.request("inflight.silent", i, timeout=30)) for i in range(20)]
        calls.append(asyncio.create_task(many()))
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.kill()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert loop.time() - started < 5  # at the disconnect, not at the 30 s deadline
        for r in results:
            assert isinstance(r, Disconnected), r
            assert r.code == 503 and isinstance(r, conat.Timeout)  # retry policies treat it as transient
            assert r.subject == "inflight.silent"
        assert c.statistics().pending_requests == 0
        # After the reconnect, requests work again.
        await server.restart()
        await responder.subscribe("inflight.echo", callback=lambda m: m.respond(m.data))
        reply = await c.request("inflight.echo", "back", timeout=10, wait_for_interest=True)
        assert reply.data == "back"


async def test_a_server_whose_max_payload_is_too_small_for_conat_is_refused_at_connect(tmp_path) -> None:
    # Regression: the client connected, then every publish failed with a misleading message.
    config = conat.ServerConfig(extra_blocks={"max_payload": 2048})  # past ServerConfig's own check
    async with conat.NatsServer(config, directory=tmp_path) as server:
        with pytest.raises(ConnectError, match="max_payload is 2048 bytes; conat needs at least 16384"):
            await conat.connect(server.url)
