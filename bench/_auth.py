"""Auth benchmarks: a bus with the auth callout against the plain bus of the run.

* ``auth_connect``: N sequential connects (p50, p99 latency), then 100 concurrent connects (s).
  conat side: ``conat.connect(credentials=token)`` to a :class:`conat.auth.AuthBus` (the callout
  verifies the token and signs a user JWT per connect); baseline: ``conat.connect()`` to the plain
  server. The callout's cost is one server → responder → server round trip plus the crypto.
* ``auth_pubsub`` / ``auth_request``: steady state once connected, on the auth bus (the client's
  own grant check included) vs the plain bus: nats-server enforces permissions from a cache, so
  the target is a ratio of about 1.

Each conat-side run starts its own auth bus (keys, secrets, server, responder) in a temporary
directory; that setup is not timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import conat
from conat.auth import AuthBus, Keyring, TokenIssuer
from subjects import Scope

from ._harness import Bench, Measure, Metric, Sample, percentile

__all__ = ["auth_benches"]

PROJECT: Final = str(uuid.UUID(int=1))
HOST: Final = str(uuid.UUID(int=2))
ACCOUNT: Final = str(uuid.UUID(int=3))
BUS: Final = f"host-{HOST}"
SUBJECT: Final = f"fs.project-{PROJECT}"
CONCURRENT: Final = 100
SIZE: Final = 128


@contextlib.asynccontextmanager
async def _auth_bus() -> AsyncIterator[tuple[str, TokenIssuer]]:
    with tempfile.TemporaryDirectory(prefix="conat-bench-auth-") as tmp:
        keyring = Keyring.open(Path(tmp) / "keys")
        async with await AuthBus.start(
            bus=BUS, public_keys=keyring.public_keys(), directory=Path(tmp) / "bus", per_address=(10_000.0, 1.0)
        ) as bus:
            yield bus.url, TokenIssuer(keyring)


def _token(issuer: TokenIssuer | None, principal: str) -> str | None:
    if issuer is None:
        return None
    return issuer.issue(principal, BUS, Scope(projects=(PROJECT,)), 600)


async def _connect(url: str, issuer: TokenIssuer | None, principal: str = f"account-{ACCOUNT}") -> conat.Client:
    token = _token(issuer, principal)
    if token is None:
        return await conat.connect(url)
    return await conat.connect(url, credentials=token)


@contextlib.asynccontextmanager
async def _bus(url: str, auth: bool) -> AsyncIterator[tuple[str, TokenIssuer | None]]:
    if not auth:
        yield url, None
        return
    async with _auth_bus() as (auth_url, issuer):
        yield auth_url, issuer


def _connects(auth: bool) -> Measure:
    async def measure(url: str, count: int) -> Sample:
        async with _bus(url, auth) as (target, issuer):
            for _ in range(5):  # warm up
                await (await _connect(target, issuer)).aclose()
            latencies = []
            for i in range(count):
                t = time.perf_counter()
                client = await _connect(target, issuer, f"account-{uuid.UUID(int=5000 + i)}")
                latencies.append(time.perf_counter() - t)
                await client.aclose()
            latencies.sort()
            t = time.perf_counter()
            # distinct principals: one principal connecting 100 times at once is what the
            # per-principal rate limit refuses
            accounts = [f"account-{uuid.UUID(int=1000 + i)}" for i in range(CONCURRENT)]
            clients = await asyncio.gather(*(_connect(target, issuer, a) for a in accounts))
            storm = time.perf_counter() - t
            await asyncio.gather(*(c.aclose() for c in clients))
        extra = {"p99_ms": percentile(latencies, 0.99) * 1e3, "storm_s": storm}
        return Sample(percentile(latencies, 0.50) * 1e3, extra, count=count, elapsed_s=sum(latencies))

    return measure


def _pubsub(auth: bool) -> Measure:
    async def measure(url: str, count: int) -> Sample:
        async with _bus(url, auth) as (target, issuer):
            publisher = await _connect(target, issuer)
            subscriber = await _connect(target, issuer, f"project-{PROJECT}")
            try:
                done = asyncio.get_running_loop().create_future()
                got = 0

                def on_msg(msg: conat.Message) -> None:
                    nonlocal got
                    got += 1
                    if got == count and not done.done():
                        done.set_result(time.perf_counter())

                await subscriber.subscribe(SUBJECT, dispatch=on_msg, max_buffer=count + 1)
                payload = b"x" * SIZE
                t0 = time.perf_counter()
                for _ in range(count):
                    await publisher.publish(SUBJECT, payload, encoding="raw")
                await publisher.flush()
                t1 = await asyncio.wait_for(done, 60)
            finally:
                await publisher.aclose()
                await subscriber.aclose()
        return Sample(count / (t1 - t0), count=count, elapsed_s=t1 - t0)

    return measure


def _request(auth: bool) -> Measure:
    async def measure(url: str, count: int) -> Sample:
        async with _bus(url, auth) as (target, issuer):
            caller = await _connect(target, issuer)
            service = await _connect(target, issuer, f"project-{PROJECT}")
            try:

                async def echo(msg: conat.Message) -> None:
                    await msg.respond(msg.raw, encoding="raw")

                await service.subscribe(SUBJECT, callback=echo)
                payload = b"q" * SIZE
                for _ in range(100):
                    await caller.request(SUBJECT, payload, encoding="raw", timeout=10)
                t0 = time.perf_counter()
                for _ in range(count):
                    await caller.request(SUBJECT, payload, encoding="raw", timeout=10)
                elapsed = time.perf_counter() - t0
            finally:
                await caller.aclose()
                await service.aclose()
        return Sample(count / elapsed, count=count, elapsed_s=elapsed)

    return measure


def auth_benches() -> list[Bench]:
    plain = "no auth"
    return [
        Bench("auth_connect", f"connect latency with the callout, then {CONCURRENT} concurrent connects",
              _connects(True), _connects(False),
              (Metric("auth_connect_p50", "ms", 0.0, higher_is_better=False, informational=True),
               Metric("auth_connect_p99", "ms", 0.0, "p99_ms", higher_is_better=False, informational=True),
               Metric(f"auth_connect{CONCURRENT}", "s", 0.0, "storm_s", higher_is_better=False,
                      informational=True)),
              200, 40, {"concurrent": CONCURRENT}, baseline=plain),
        Bench("auth_pubsub", "publish -> subscribe, 128 B, on the auth bus vs a plain bus",
              _pubsub(True), _pubsub(False), (Metric("auth_pubsub", "msgs/s", 0.9),),
              100_000, 10_000, {"size": SIZE}, baseline=plain),
        Bench("auth_request", "serial request/reply, 128 B, on the auth bus vs a plain bus",
              _request(True), _request(False), (Metric("auth_request", "req/s", 0.9),),
              5_000, 1_000, {"size": SIZE}, baseline=plain),
    ]  # fmt: skip
