"""The callout end to end: refused credentials and their audit codes, refresh across token
lifetimes, and where secrets live (revocation: test_revocation.py)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import conat
from conat import ClientState, InfoResponse, StatsResponse
from conat.auth import (
    AUTH_CALLOUT_SUBJECT,
    CALLOUT_SERVICE,
    AuthBus,
    AuthCallout,
    BusSecrets,
    Keyring,
    SecretFileError,
    TokenIssuer,
)
from subjects import Scope

from .conftest import BUS, A, Mint, P, Q, connect_as, refused_reason, until

pytestmark = pytest.mark.anyio


def _flip(token: str, index: int) -> str:
    chars = list(token)
    chars[index] = "A" if chars[index] != "A" else "B"
    return "".join(chars)


async def test_token_attacks_are_refused_each_with_its_code(bus: AuthBus, mint: Mint, tmp_path: Path) -> None:
    principal, scope = f"account-{A}", Scope(projects=(P,))
    good = mint.token(principal, scope)
    head, body, sig = good.split(".")
    foreign = TokenIssuer(Keyring.open(tmp_path / "foreign"))
    cases = {
        "tampered payload": (_flip(good, len(head) + 5), "bad-signature"),
        "tampered signature": (f"{head}.{body}.{_flip(sig, 3)}", "bad-signature"),
        "foreign key": (foreign.issue(principal, BUS, scope, 300), "unknown-kid"),
        "expired": (mint.issuer.issue(principal, BUS, scope, 60, now=1_000_000.0), "expired"),
        "not yet valid": (
            mint.issuer.issue(principal, BUS, scope, 60, nbf=time.time() + 3600),
            "not-yet-valid",
        ),
        "wrong audience": (mint.token(principal, scope, aud="master"), "wrong-audience"),
        "truncated": (good[: len(good) // 2], "malformed"),
        "oversized": ("conat1." + "A" * 20_000 + ".AAAA", "too-large"),
        "garbage": (base64.urlsafe_b64encode(os.urandom(48)).decode(), "malformed"),
    }
    for what, (token, code) in cases.items():
        assert await refused_reason(bus, token) == code, what
    # and the good one passes, audited as a grant without the token in it
    client = await connect_as(bus, good)
    await client.aclose()
    entries = await bus.audit.entries(principal)
    assert entries[-1].result == "grant"
    assert all(good not in repr(e) for e in await bus.audit.entries())


async def test_refresh_keeps_a_client_connected_across_token_lifetimes(bus: AuthBus, mint: Mint) -> None:
    principal, scope = f"account-{A}", Scope(projects=(P,))
    issued: list[str] = []

    async def provider() -> str:
        issued.append(mint.token(principal, scope, ttl=3.0))
        return issued[-1]

    client = await conat.connect(bus.url, credentials=provider)
    project = await connect_as(bus, mint.token(f"project-{P}"))
    try:
        received: list[int] = []
        sub = await client.subscribe(f"fs.project-{P}", dispatch=lambda m: received.append(m.data))
        n = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 7.5  # two and a half token lifetimes
        while loop.time() < deadline:
            n += 1
            await project.publish(f"fs.project-{P}", n)
            await asyncio.sleep(0.1)
        await project.flush()
        await until(lambda: received and received[-1] == n)
        assert client.state is ClientState.CONNECTED
        assert len(issued) >= 3  # refreshed at least twice
        assert not sub.closed
        assert received == sorted(received)  # in order; a refresh may drop in-flight messages only
    finally:
        await client.aclose()
        await project.aclose()


async def test_secrets_are_private_and_never_in_argv_env_or_logs(bus: AuthBus, mint: Mint) -> None:
    secrets_dir = Path(bus.server.config_path).parent.parent / "secrets"
    files = sorted(secrets_dir.iterdir())
    assert {f.name for f in files} >= {"issuer.seed", "xkey.seed", "auth.password", "sys.password"}
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600, f
    token = mint.token(f"account-{A}", Scope(projects=(P,)))
    client = await connect_as(bus, token)
    await client.aclose()
    pid = bus.server.pid
    assert pid is not None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    log_text = Path(bus.server.log_path).read_text()
    for secret in [f.read_text().strip() for f in files] + [token]:
        assert secret.encode() not in cmdline
        assert secret.encode() not in environ
        assert secret not in log_text


async def test_several_responders_share_the_load_as_a_queue_group(bus: AuthBus, mint: Mint) -> None:
    secrets_ = BusSecrets.load_or_create(Path(bus.server.config_path).parent.parent / "secrets")
    async with await conat.connect(bus.url, user="auth", password=secrets_.auth_password) as second:
        other = await AuthCallout(second, bus.decider).start()
        try:
            first = bus.responder.callout
            before = first.statistics().answered
            for i in range(40):
                client = await connect_as(bus, mint.token(f"account-{uuid.UUID(int=900 + i)}"))
                await client.aclose()
            by_first, by_second = first.statistics().answered - before, other.statistics().answered
            assert by_first + by_second == 40  # exactly one answer per connect
            assert by_first > 0 and by_second > 0
            assert other.statistics().granted == by_second
        finally:
            await other.aclose()


async def test_the_callout_is_a_service_in_srv_discovery(bus: AuthBus, mint: Mint) -> None:
    """The callout is a plain conat service, discoverable like any other (in the AUTH account,
    where its connection lives), with its figures."""
    await (await connect_as(bus, mint.token(f"account-{A}", Scope(projects=(P,))))).aclose()
    secrets_ = BusSecrets.load_or_create(Path(bus.server.config_path).parent.parent / "secrets")
    async with await conat.connect(bus.url, user="auth", password=secrets_.auth_password) as operator:
        info = (await operator.request(f"$SRV.INFO.{CALLOUT_SERVICE}", None)).decode(InfoResponse)
        stats = (await operator.request(f"$SRV.STATS.{CALLOUT_SERVICE}", None)).decode(StatsResponse)
    assert info.id == bus.responder.callout.micro.id
    assert [(e.name, e.subject, e.queue_group) for e in info.endpoints] == [
        ("authorize", AUTH_CALLOUT_SUBJECT, "conat-auth")
    ]
    (endpoint,) = stats.endpoints
    assert endpoint.num_requests >= 1 and endpoint.num_errors == 0
    assert endpoint.data is not None and endpoint.data["granted"] >= 1


async def test_a_one_time_token_is_refused_after_its_first_use(bus: AuthBus, mint: Mint) -> None:
    token = mint.issuer.issue(f"host-{uuid.UUID(int=77)}", BUS, Scope(), 300, once=True)
    client = await connect_as(bus, token)
    await client.aclose()
    assert await refused_reason(bus, token) == "replayed"


async def test_connect_attempts_are_rate_limited_per_principal(mint: Mint, tmp_path: Path) -> None:
    async with await AuthBus.start(
        bus=BUS, public_keys=mint.keyring.public_keys(), directory=tmp_path / "bus", per_principal=(3.0, 60.0)
    ) as limited:
        token = mint.token(f"account-{A}", Scope(projects=(P,)))
        for _ in range(3):
            await (await connect_as(limited, token)).aclose()
        assert await refused_reason(limited, token) == "rate-limited"
        # another principal is not affected
        await (await connect_as(limited, mint.token(f"project-{P}"))).aclose()


async def test_a_token_file_is_read_at_connect_and_must_be_private(
    bus: AuthBus, mint: Mint, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    path.write_text(mint.token(f"account-{A}", Scope(projects=(P,))))
    path.chmod(0o600)
    client = await conat.connect(bus.url, credentials=path)
    assert client.principal == f"account-{A}"
    await client.aclose()
    path.chmod(0o644)
    with pytest.raises(SecretFileError, match="accessible by group or others") as e:
        await conat.connect(bus.url, credentials=path)
    assert e.value.code == "insecure"


async def test_a_string_that_is_not_a_token_is_a_token_files_path(
    bus: AuthBus, mint: Mint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``credentials="path/to/token"`` works like a ``Path``: a token always starts with ``conat1.``
    and never looks like a path, so any other string names a file, and the error says so."""
    path = tmp_path / "token"
    path.write_text(mint.token(f"account-{A}", Scope(projects=(P,))) + "\n")
    path.chmod(0o600)
    async with await conat.connect(bus.url, credentials=str(path)) as client:
        assert client.principal == f"account-{A}"
    monkeypatch.chdir(tmp_path)
    async with await conat.connect(bus.url, credentials="token") as client:  # relative, no "/"
        assert client.principal == f"account-{A}"
    with pytest.raises(SecretFileError) as e:
        await conat.connect(bus.url, credentials="let-me-in")
    assert e.value.code == "missing"
    assert "let-me-in" in str(e.value) and "not a conat1 token name a file" in str(e.value)


async def test_the_cli_takes_a_token_file_never_the_token(bus: AuthBus, mint: Mint, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(mint.token(f"account-{A}", Scope(projects=(P,))))
    path.chmod(0o600)

    def conat_cli(*args: str) -> int:
        cmd = [sys.executable, "-m", "conat.cli", "--url", bus.url, *args]
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode

    assert await asyncio.to_thread(conat_cli, "--credentials", str(path), "pub", f"fs.project-{P}", "hi") == 0
    assert await asyncio.to_thread(conat_cli, "--credentials", str(path), "pub", f"fs.project-{Q}", "no") == 5
    assert await asyncio.to_thread(conat_cli, "pub", "public.x", "anonymous") == 6
