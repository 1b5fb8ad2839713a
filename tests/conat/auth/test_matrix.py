"""The permission matrix on a real nats-server with the auth callout.

For each principal the bus admits (the unrestricted ones, hub and the host on its own bus,
included), every (subject, operation) is tried twice: through the client's
own grant check (``Forbidden`` at once) and, with the local check switched off, against
nats-server itself. Both must equal the policy (``subjects.grant``), and a publish the server
refuses must never reach a subscriber that may see the subject (the observer, the host itself).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import conat
from conat import Forbidden, Unauthorized
from conat.auth import AuthBus
from subjects import MASTER_BUS, Scope, grant, master_host_api, runner_host

from .conftest import BUS, H2, A, B, H, Mint, O, P, Q, connect_as

pytestmark = pytest.mark.anyio

PRINCIPALS: dict[str, tuple[str, Scope]] = {
    "collaborator": (f"account-{A}", Scope(projects=(P,))),
    "stranger": (f"account-{B}", Scope(projects=(Q,))),
    "project": (f"project-{P}", Scope()),
    "host-owner": (f"account-{O}", Scope(hosts=(H,))),
    "other-host": (f"host-{H2}", Scope()),
    # unrestricted principals: an open grant must reach nats-server as an explicit ">"
    "hub": ("hub", Scope()),
    "own-host": (f"host-{H}", Scope()),
}

SUBJECTS = [
    f"fs.project-{P}",
    f"persist.project-{P}.kv",
    f"fs.project-{Q}",
    f"persist.project-{Q}.kv",
    f"project.{P}.api",
    f"bootlog.project.{P}",
    f"bootlog.host.{H}",
    f"runner.host-{H}",
    "public.news",
]
PATTERNS = [*SUBJECTS, "persist.*.kv", "_INBOX.>", f"_INBOX.account-{A}.>", "$SYS.>", "public.>"]


async def test_a_client_without_credentials_is_refused(bus: AuthBus) -> None:
    with pytest.raises(Unauthorized) as e:
        await conat.connect(bus.url, connect_attempts=1)
    assert e.value.code == 401


@pytest.mark.parametrize("who", sorted(PRINCIPALS))
async def test_publish_and_subscribe_equal_the_policy(bus: AuthBus, mint: Mint, who: str) -> None:
    principal, scope = PRINCIPALS[who]
    policy = grant(principal, scope, BUS).permissions
    host = await connect_as(bus, mint.token(f"host-{H}"))
    client = await connect_as(bus, mint.token(principal, scope))
    try:
        assert client.principal == principal
        seen: list[str] = []
        for subject in [*SUBJECTS, "public.sentinel"]:
            await host.subscribe(subject, dispatch=lambda msg: seen.append(msg.subject))

        # 1. the client's own check equals the policy, for publish, request and subscribe
        with pytest.raises(Forbidden):
            await client.request("$SYS.REQ.SERVER.PING", None, timeout=1)
        for subject in SUBJECTS:
            if policy.can_publish(subject):
                await client.publish(subject, "local")
            else:
                with pytest.raises(Forbidden):
                    await client.publish(subject, "local")
                with pytest.raises(Forbidden):
                    await client.request(subject, "local", timeout=1)
        for pattern in PATTERNS:
            if not policy.can_subscribe(pattern):
                with pytest.raises(Forbidden):
                    await client.subscribe(pattern)

        # 2. nats-server enforces the same grant when the client does not check
        client.permissions = None
        seen.clear()
        for subject in SUBJECTS:
            await client.publish(subject, "server")
        # one publisher's messages arrive in order: once the sentinel is in, every earlier
        # publish that the server let through is in too
        await client.publish("public.sentinel", "end")
        await _until(lambda: "public.sentinel" in seen)
        delivered = set(seen)
        for subject in SUBJECTS:
            assert (subject in delivered) == policy.can_publish(subject), (who, subject)
        # requests the server refuses fail with Forbidden (the safety net), not a timeout
        for subject in ["$SYS.REQ.SERVER.PING", *[s for s in SUBJECTS if not policy.can_publish(s)]]:
            with pytest.raises(Forbidden):
                await client.request(subject, None, timeout=5)
        for pattern in PATTERNS:
            allowed = policy.can_subscribe(pattern)
            if allowed:
                sub = await client.subscribe(pattern)
                await sub.unsubscribe()
            else:
                with pytest.raises(Forbidden):
                    await client.subscribe(pattern)
    finally:
        await client.aclose()
        await host.aclose()


async def test_services_answer_through_response_permissions_only(bus: AuthBus, mint: Mint) -> None:
    """The project process serves ``project.<P>.>``; a collaborator calls it and gets the answer
    on its private inbox, which nobody else may subscribe to."""
    project = await connect_as(bus, mint.token(f"project-{P}"))
    caller = await connect_as(bus, mint.token(f"account-{A}", Scope(projects=(P,))))
    stranger = await connect_as(bus, mint.token(f"account-{B}", Scope(projects=(Q,))))
    try:

        async def echo(msg: conat.Message) -> Any:
            await msg.respond({"echo": msg.data})

        await project.subscribe(f"project.{P}.api", callback=echo)
        await project.flush()
        reply = await caller.request(f"project.{P}.api", 7, timeout=5)
        assert reply.data == {"echo": 7}
        assert reply.subject.startswith(f"_INBOX.account-{A}.")
        # the service cannot publish into the caller's inbox outside a reply
        spied: list[object] = []
        await caller.subscribe(f"_INBOX.account-{A}.spy", dispatch=lambda m: spied.append(m.data))
        await caller.subscribe("public.sentinel.inbox", dispatch=lambda m: spied.append(m.data))
        project.permissions = None
        await project.publish(f"_INBOX.account-{A}.spy", "unsolicited")
        await project.publish("public.sentinel.inbox", "end")  # routed after the refused one
        await _until(lambda: "end" in spied)
        assert spied == ["end"]
        stranger.permissions = None
        with pytest.raises(Forbidden):
            await stranger.subscribe(f"_INBOX.account-{A}.>")
        with pytest.raises(Forbidden):
            await stranger.request(f"project.{P}.api", 1, timeout=2)
    finally:
        for c in (project, caller, stranger):
            await c.aclose()


async def _until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_master_reaches_a_host_runner_on_the_master_bus(mint: Mint, tmp_path: Path) -> None:
    """The blocker: hub's open grant must let it publish (request) next to its response
    permissions, and a host must answer it on ``runner.host-<h>``."""
    async with await AuthBus.start(
        bus=MASTER_BUS, public_keys=mint.keyring.public_keys(), directory=tmp_path / "master-bus"
    ) as master_bus:
        host = await connect_as(master_bus, mint.token(f"host-{H}", aud=MASTER_BUS))
        hub = await connect_as(master_bus, mint.token("hub", aud=MASTER_BUS))
        try:

            async def runner(msg: conat.Message) -> Any:
                await msg.respond({"started": msg.data})

            await host.subscribe(runner_host(H), callback=runner)
            await host.flush()
            hub.permissions = None  # the server alone decides
            reply = await hub.request(runner_host(H), "p1", timeout=5)
            assert reply.data == {"started": "p1"}
            # and the host can reach master's host API, which hub serves
            await hub.subscribe(master_host_api(H), callback=runner)
            await hub.flush()
            host.permissions = None
            assert (await host.request(master_host_api(H), "hello", timeout=5)).data == {"started": "hello"}
        finally:
            await hub.aclose()
            await host.aclose()
