"""Actor benchmarks: a keyed actor against a plain subscription handler doing the same work.

Both sides answer the same typed request (``RpcRequest("echo", [128 bytes])``) from another
connection with 50 concurrent requesters spread over many keys:

* conat side: an :class:`actors.ActorSystem` serving a keyed actor on ``<base>.*`` (routing into
  per-key mailboxes, activation on first message, one turn at a time per key);
* baseline: ``client.subscribe("<base>.*", callback=handler)`` where the handler does the same
  work as one actor turn (decode the typed request with the same RPC dispatcher, call the same
  method on one shared object, respond) with no keys, mailboxes, per-key tasks or statistics.
  The ratio is therefore the cost of the actor runtime itself.

``actor_rpc`` measures steady-state requests/s over 100 already active keys. ``actor_activate``
sends one request to each of N fresh keys (N = 10,000 in full mode) and reports the seconds it
took and how much the process's RSS grew while the N activations stay live.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import types
from collections.abc import AsyncIterator
from typing import Final

import conat
from actors import Actor, ActorSystem
from conat import Dispatcher, RpcRequest

from ._harness import Bench, Measure, Metric, Sample, resources

__all__ = ["actor_benches"]

CONCURRENCY: Final = 50
KEYS: Final = 100
SIZE: Final = 128
RPC_TARGET: Final = 0.85
ACTIVATE_TARGET: Final = 2.0
REQUEST_TIMEOUT: Final = 30.0

_serial = 0


def _base() -> str:
    global _serial
    _serial += 1
    return f"bench.actor.{_serial}"


class _Echo:
    async def echo(self, data: bytes) -> bytes:
        return data


def _actor_class(subject: str) -> type[Actor]:
    """A keyed echo actor bound to ``subject`` (a fresh subject per run keeps runs apart)."""

    async def echo(self: Actor, data: bytes) -> bytes:
        return data

    return types.new_class(
        "BenchEcho",
        (Actor,),
        {"subject": subject, "idle": None, "max_buffer": 10_000, "max_active": None},
        lambda ns: ns.update({"echo": echo}),
    )


async def _serve_actor(client: conat.Client, base: str) -> ActorSystem:
    system = ActorSystem(client)
    await system.start(_actor_class(f"{base}.*"))
    return system


async def _serve_plain(client: conat.Client, base: str) -> conat.Subscription:
    impl = _Echo()
    dispatcher = Dispatcher(_Echo)

    async def handle(msg: conat.Message) -> None:
        await msg.respond(await dispatcher.invoke(impl, msg))

    return await client.subscribe(f"{base}.*", callback=handle, max_buffer=100_000)


async def _requests(client: conat.Client, subjects: list[str], concurrency: int) -> float:
    """Send one echo request to each subject, ``concurrency`` at a time; return the wall seconds."""
    payload = b"a" * SIZE
    body = RpcRequest("echo", [payload])
    queue = iter(subjects)

    async def worker() -> None:
        for subject in queue:
            reply = await client.request(subject, body, timeout=REQUEST_TIMEOUT)
            if reply.data != payload:
                raise RuntimeError("bad echo")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


@contextlib.asynccontextmanager
async def _served(url: str, actor: bool) -> AsyncIterator[tuple[conat.Client, str, ActorSystem | None]]:
    """A responder (the actor system or the plain handler) on a fresh ``<base>.*`` and a requester."""
    async with await conat.connect(url) as server, await conat.connect(url) as requester:
        base = _base()
        if actor:
            system = await _serve_actor(server, base)
            try:
                yield requester, base, system
            finally:
                await system.stop()
        else:
            sub = await _serve_plain(server, base)
            try:
                yield requester, base, None
            finally:
                await sub.unsubscribe()


def _rpc(actor: bool) -> Measure:
    async def measure(url: str, count: int) -> Sample:
        async with _served(url, actor) as (requester, base, _):
            keys = [f"{base}.k{i % KEYS}" for i in range(count)]
            await _requests(requester, keys[: max(KEYS, count // 10)], CONCURRENCY)  # warm up
            cpu0 = time.process_time()
            wall = await _requests(requester, keys, CONCURRENCY)
            cpu = time.process_time() - cpu0
        return Sample(count / wall, {"cpu_us_per_op": cpu / count * 1e6}, count=count, elapsed_s=wall)

    return measure


def _activate(actor: bool) -> Measure:
    async def measure(url: str, count: int) -> Sample:
        async with _served(url, actor) as (requester, base, system):
            gc.collect()
            before = resources().rss_mb
            wall = await _requests(requester, [f"{base}.key-{i}" for i in range(count)], CONCURRENCY * 4)
            gc.collect()
            grown = resources().rss_mb - before
            if system is not None and (active := system.runtimes[0].statistics().active_keys) != count:
                raise RuntimeError(f"{active} of {count} keys active")
        extra = {"rss_delta_mb": max(0.0, grown), "keys_per_s": count / wall}
        return Sample(wall, extra, count=count, elapsed_s=wall)

    return measure


def actor_benches() -> list[Bench]:
    plain = "subscribe(callback)"
    return [
        Bench("actor_rpc", f"keyed actor RPC over {KEYS} keys, {CONCURRENCY} concurrent requesters, 128 B",
              _rpc(True), _rpc(False), (Metric("actor_rpc", "req/s", RPC_TARGET),),
              50_000, 3_000, {"keys": KEYS, "concurrency": CONCURRENCY}, baseline=plain),
        Bench("actor_activate", "one request to each of N fresh keys (N activations stay live)",
              _activate(True), _activate(False),
              (Metric("actor_activate", "s", ACTIVATE_TARGET, higher_is_better=False),
               # the largest growth over the reps: later reps reuse memory freed by earlier ones
               Metric("actor_activate_rss", "MB", 0.0, "rss_delta_mb", informational=True)),
              10_000, 2_000, {"concurrency": CONCURRENCY * 4, "unit_of_count": "keys"}, baseline=plain),
    ]  # fmt: skip
