"""Revocation on a real bus: by revision (no clock compared), durable, heard by every responder of
the bus (one of them in a process of its own), and a revoke racing a connect still kicks.

``mint.revoke`` plays master: it bumps the principal's revision and tells the bus the new floor;
``bus.revoke(p)`` alone is a bus used without master.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import conat
from conat import ClientState, Unauthorized
from conat.auth import AuthBus, AuthResponder, Decision, PublicKeys
from subjects import Scope

from .conftest import BUS, Mint, P, connect_as, refused_reason, until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[3]


def account(n: int) -> str:
    return f"account-{uuid.UUID(int=1000 + n)}"


async def test_a_revoke_kicks_and_keeps_old_tokens_out(bus: AuthBus, mint: Mint) -> None:
    principal = account(1)
    token = mint.token(principal, Scope(projects=(P,)))
    client = await connect_as(bus, token)
    observer = await connect_as(bus, mint.token(f"project-{P}"))
    try:
        got: list[object] = []
        await observer.subscribe(f"fs.project-{P}", dispatch=lambda m: got.append(m.data))
        await client.publish(f"fs.project-{P}", "before")
        await until(lambda: got == ["before"])
        revocation = await mint.revoke(bus, principal)
        assert (revocation.principal, revocation.below, revocation.kicked) == (principal, 1, 1)
        # the kicked client is refused at every reconnect and closes, saying why
        await until(lambda: client.state is ClientState.CLOSED)
        assert isinstance(client.close_reason, Unauthorized)
        assert client.close_reason.refusal == "refused"
        with pytest.raises(conat.ClosedError):
            await client.publish(f"fs.project-{P}", "after")
        # the same token cannot come back; a token at the new revision can, at once
        assert await refused_reason(bus, token) == "revoked"
        again = await connect_as(bus, mint.token(principal, Scope(projects=(P,))))
        await again.aclose()
        results = [(e.result, e.reason) for e in await bus.audit.entries(principal)]
        assert ("revoke", "revoked") in results and ("kick", "revoked") in results
        assert results[-1] == ("grant", "ok")
    finally:
        await client.aclose()
        await observer.aclose()


async def test_a_revoke_compares_no_clocks(bus: AuthBus, mint: Mint) -> None:
    """A token minted before the revoke by a master whose clock runs ahead (inside the leeway) is
    refused: the bus compares the issuer's revisions, never the issuer's times with its own."""
    principal = account(2)
    ahead = mint.token(principal, now=time.time() + 20)
    behind = mint.token(principal, now=time.time() - 20)
    await (await connect_as(bus, ahead)).aclose()
    await mint.revoke(bus, principal)
    assert await refused_reason(bus, ahead) == "revoked"
    assert await refused_reason(bus, behind) == "revoked"
    # minted after the revoke, by the same clocks: accepted
    await (await connect_as(bus, mint.token(principal, now=time.time() + 20))).aclose()
    await (await connect_as(bus, mint.token(principal, now=time.time() - 20))).aclose()


async def test_a_bus_used_without_master_revokes_alone(bus: AuthBus, mint: Mint) -> None:
    """``bus.revoke(p)`` raises the floor by one: every token at the old revision is refused, the
    ones issued before *and after*; the issuer mints the next ones at the returned floor."""
    principal = account(3)
    client = await connect_as(bus, mint.issuer.issue(principal, BUS, Scope(), 300))
    try:
        revocation = await bus.revoke(principal)
        assert (revocation.below, revocation.kicked) == (1, 1)
        await until(lambda: client.state is ClientState.CLOSED)
        later = mint.issuer.issue(principal, BUS, Scope(), 300)
        assert await refused_reason(bus, later) == "revoked"
        fresh = mint.issuer.issue(principal, BUS, Scope(), 300, revision=revocation.below)
        await (await connect_as(bus, fresh)).aclose()
        assert (await bus.revoke(principal)).below == 2
        assert await refused_reason(bus, fresh) == "revoked"
        # a floor from the issuer never lowers the bus's
        assert (await bus.revoke(principal, below=1)).below == 2
        assert (await bus.store.floors())[principal] == 2
    finally:
        await client.aclose()


async def test_a_revoke_checks_its_arguments(bus: AuthBus) -> None:
    with pytest.raises(ValueError, match="principal"):
        await bus.revoke("alice")
    with pytest.raises(ValueError, match="below"):
        await bus.revoke(account(4), below=0)


async def test_revocations_and_used_one_time_tokens_survive_a_restart(mint: Mint, tmp_path: Path) -> None:
    directory = tmp_path / "bus"
    principal = account(5)
    old = mint.token(principal)
    once = mint.token(f"host-{uuid.UUID(int=1005)}", once=True)
    async with await AuthBus.start(bus=BUS, public_keys=mint.keyring.public_keys(), directory=directory) as b:
        await (await connect_as(b, once)).aclose()
        await mint.revoke(b, principal)
    async with await AuthBus.start(bus=BUS, public_keys=mint.keyring.public_keys(), directory=directory) as b:
        assert await refused_reason(b, old) == "revoked"
        assert await refused_reason(b, once) == "replayed"
        await (await connect_as(b, mint.token(principal))).aclose()
    files = sorted(directory.glob("*.sqlite*"))
    assert {f.name for f in files} >= {"auth.sqlite", "audit.sqlite"}
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files), [
        (f.name, oct(f.stat().st_mode)) for f in files
    ]


@contextlib.asynccontextmanager
async def responder_process(bus: AuthBus, directory: Path, keys: Path) -> AsyncIterator[None]:
    """A responder of ``bus`` in a process of its own (tests/conat/auth/responder_process.py)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.conat.auth.responder_process",
        bus.url,
        BUS,
        str(directory),
        str(keys),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            assert await proc.stdout.readline() == b"ready\n"
        yield
    finally:
        proc.stdin.close()
        try:
            async with asyncio.timeout(30):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_every_responder_of_the_bus_hears_a_revoke(mint: Mint, tmp_path: Path) -> None:
    """Connections granted by a responder in another process are kicked when this one revokes,
    and both share the one-time tokens already used and the audit log."""
    directory, keys = tmp_path / "bus", tmp_path / "pinned.json"
    mint.keyring.public().save(keys)
    principal = account(6)
    async with await AuthBus.start(bus=BUS, public_keys=PublicKeys.load(keys), directory=directory) as b:
        await b.responder.aclose()  # the other process answers alone for now
        clients: list[conat.Client] = []
        async with responder_process(b, directory, keys):
            try:
                for _ in range(3):
                    clients.append(await connect_as(b, mint.token(principal)))  # noqa: PERF401 (cleanup on failure)
                once = mint.token(f"host-{uuid.UUID(int=1006)}", once=True)
                await (await connect_as(b, once)).aclose()
                b.responder = await AuthResponder.start(
                    bus=BUS, url=b.url, public_keys=PublicKeys.load(keys), directory=directory
                )
                revocation = await mint.revoke(b, principal)
                assert revocation.kicked == 0  # this responder granted none of them...
                await until(lambda: all(c.state is ClientState.CLOSED for c in clients), timeout=20)
                reasons = [c.close_reason for c in clients]  # ...the other kicked them
                assert all(isinstance(r, Unauthorized) for r in reasons), reasons
                assert await refused_reason(b, once) == "replayed"

                async def kicks() -> int:
                    return sum(e.result == "kick" for e in await b.audit.entries(principal))

                async with asyncio.timeout(10):
                    while await kicks() < 3:
                        await asyncio.sleep(0.05)
            finally:
                for client in clients:
                    await client.aclose()


async def test_a_revoke_racing_a_connect_still_kicks(mint: Mint, tmp_path: Path) -> None:
    """One responder has decided to grant a connect and not answered yet when another revokes: the
    grant was recorded before its revocation check, so the notice makes the granting responder kick
    the connection, which then never gets to use the grant: nothing it sends reaches anyone."""
    directory = tmp_path / "bus"
    principal = account(7)
    async with await AuthBus.start(bus=BUS, public_keys=mint.keyring.public_keys(), directory=directory) as b:
        observer = await connect_as(b, mint.token(f"project-{P}"))
        seen: list[object] = []
        await observer.subscribe("public.race", dispatch=lambda m: seen.append(m.data))
        granting = b.responder
        decided, release = asyncio.Event(), asyncio.Event()
        decide = granting.decider.decide

        async def held(payload: bytes, server_xkey: str | None) -> Decision | None:
            decision = await decide(payload, server_xkey)
            if decision is not None and decision.granted and decision.principal == principal:
                decided.set()
                await release.wait()
            return decision

        granting.decider.decide = held  # type: ignore[method-assign]
        connecting = asyncio.ensure_future(
            conat.connect(b.url, credentials=mint.token(principal), connect_timeout=30)
        )
        revoker = None
        try:
            await decided.wait()
            revoker = await AuthResponder.start(
                bus=BUS, url=b.url, public_keys=mint.keyring.public_keys(), directory=directory
            )
            revocation = await mint.revoke(revoker, principal)  # type: ignore[arg-type]
            assert revocation.kicked == 0
            await until(lambda: not granting.decider.connections.of(principal))  # kicked by the granter
            release.set()
            try:
                client = await connecting
            except Unauthorized as e:
                assert e.refusal == "refused"
            else:
                # nats-py 2.16 returns from connect() when the server closes the socket while the
                # client waits for the handshake's PONG (EOF instead of a reset): the client never
                # had a working connection, is refused at its reconnects and closes saying why
                try:
                    await client.publish("public.race", "after the revoke")
                    await until(lambda: client.state is ClientState.CLOSED, timeout=15)
                    assert isinstance(client.close_reason, Unauthorized)
                finally:
                    await client.aclose()
            await observer.publish("public.race", "sentinel")
            await until(lambda: "sentinel" in seen)
            await asyncio.sleep(0.2)  # anything the racing client got through would be here by now
            assert seen == ["sentinel"]
            results = [(r.result, r.reason) for r in await b.audit.entries(principal)]
            assert results[:3] == [("grant", "ok"), ("revoke", "revoked"), ("kick", "revoked")], results
            assert ("refuse", "revoked") in results
        finally:
            release.set()
            if not connecting.done():
                connecting.cancel()
            if revoker is not None:
                await revoker.aclose()
            await observer.aclose()
