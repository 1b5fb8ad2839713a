"""The demo service that ``conat up`` runs, and the conversation it has with it.

The service lives on its own connection and answers on three subjects built with ``subjects``:

- ``public.demo.greeter``: a typed RPC service (:class:`Greeter`) served with ``client.serve``:
  ``greet(name)`` (counts greetings), ``stats()``, and ``echo(data)``;
- ``public.demo.count``: a streaming responder: a request ``n`` gets the replies 1..n, then the
  end-of-stream marker (what ``request_many`` / ``conat req --many`` reads);
- ``public.demo.events``: plain pub/sub, used by the conversation between two connections;
- ``public.demo.socket.*``: a reliable socket server; a client connects on a concrete subject
  (``public.demo.socket.<who>``) and every message it sends comes back upper-cased, in order.

The conversation exercises each feature once and prints one line per step; any wrong answer raises
:class:`DemoFailed`.

Higher layers take part in ``conat up`` through :class:`UpExtension` (a service run in-process on the
embedded bus, and a step of the conversation), found through entry points: conat never imports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec

import conat
import subjects

from ._output import Printer, to_json

__all__ = [
    "CHUNKED_BYTES",
    "COUNT",
    "EVENTS",
    "GREETER",
    "PLUGIN_GROUP",
    "SOCKETS",
    "DemoFailed",
    "Greeter",
    "GreeterService",
    "GreeterStats",
    "UpExtension",
    "UpOptions",
    "conversation",
    "demo_service",
    "hint_commands",
    "line",
    "up_extensions",
]

log = logging.getLogger("conat.cli")

GREETER: Final = subjects.public("demo", "greeter")
COUNT: Final = subjects.public("demo", "count")
EVENTS: Final = subjects.public("demo", "events")
SOCKETS: Final = subjects.public("demo", "socket")
CHUNKED_BYTES: Final = 8 * 1024 * 1024
MAX_COUNT: Final = 1000
_MIB: Final = 1024 * 1024
_LABEL: Final = 9

PLUGIN_GROUP: Final = "conat.up"
"""The entry point group of :class:`UpExtension` instances."""


class DemoFailed(conat.ConatError):
    """The demo service gave a wrong answer."""

    code = "demo-failed"


class GreeterStats(msgspec.Struct):
    greetings: int


class Greeter:
    """The greeter's interface, as a caller sees it: ``client.service(Greeter, GREETER)``.

    A plain class rather than a ``typing.Protocol``: ``client.service`` takes a ``type[T]``, and
    mypy refuses an abstract (Protocol) class there.
    """

    async def greet(self, name: str) -> str:
        raise NotImplementedError

    async def stats(self) -> GreeterStats:
        raise NotImplementedError

    async def echo(self, data: bytes) -> bytes:
        raise NotImplementedError


class GreeterService(Greeter):
    """The implementation: no actor, just an object whose async methods ``client.serve`` answers."""

    def __init__(self) -> None:
        self.greetings = 0

    async def greet(self, name: str) -> str:
        self.greetings += 1
        return f"Hello, {name}!"

    async def stats(self) -> GreeterStats:
        return GreeterStats(greetings=self.greetings)

    async def echo(self, data: bytes) -> bytes:
        return data


async def _count(msg: conat.Message) -> None:
    """Stream 1..n back to a ``request_many``, then end the stream."""
    if not msg.reply:
        return
    n = msg.data
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_COUNT:
        await msg.respond_error(conat.BAD_REQUEST, f"expected an integer in 1..{MAX_COUNT}, got {n!r}")
        return
    for i in range(1, n + 1):
        await msg.respond(i)
    await msg.end()


async def _shout(server: conat.SocketServer) -> None:
    """Answer every socket client: each text message comes back upper-cased, in order."""

    async def serve(conn: conat.Socket) -> None:
        with contextlib.suppress(conat.ConatError):
            async for msg in conn:
                await conn.send(str(msg.data).upper())

    async with asyncio.TaskGroup() as group:
        async for conn in server:
            group.create_task(serve(conn))


@contextlib.asynccontextmanager
async def demo_service(url: str) -> AsyncIterator[GreeterService]:
    """Run the demo service on its own connection to ``url`` while the block runs."""
    async with await conat.connect(url, name="conat-demo-service") as client:
        impl = GreeterService()
        await client.serve(GREETER, impl)
        await client.subscribe(COUNT, callback=_count)
        async with await client.socket_listen(f"{SOCKETS}.*") as server:
            shouting = asyncio.create_task(_shout(server))
            try:
                yield impl
            finally:
                shouting.cancel()
                await asyncio.gather(shouting, return_exceptions=True)


@dataclasses.dataclass(frozen=True, slots=True)
class UpOptions:
    """``conat up``'s options an extension may use (given to :meth:`UpExtension.configure`).

    Attributes:
        hosts: how many local project hosts the platform should run (``--hosts``).
        demo: walk through the platform (``--demo``): a project started with its bootlog shown
            live, a file written and read, a command run.
        once: stop after the conversation (``--once``).
    """

    hosts: int = 1
    demo: bool = False
    once: bool = False


class UpExtension:
    """A higher layer's part in ``conat up``: a service run in-process on the embedded bus, a demo
    step, and commands to try. Subclass it and name an instance in the :data:`PLUGIN_GROUP` entry
    point group (``persist = "persist._up:up_extension"``); ``conat up`` uses them in entry point
    name order.

    So the layering holds (subjects <- conat <- actors <- persist): conat defines the hook, the
    higher layer fills it, and nothing in conat names the higher layer.
    """

    name: str = "extension"
    workers: int = 1
    """Processes to serve the extension's partitioned service with (``conat up --workers N``)."""

    def mappings(self, workers: int) -> dict[str, str]:
        """Subject mappings the bus needs for ``workers`` processes of the service (none by default)."""
        return {}

    def configure(self, options: UpOptions) -> None:
        """Take ``conat up``'s options before :meth:`serve` (default: ignore them)."""

    def status(self) -> list[str]:
        """Lines for ``conat status`` about what this extension runs (another process may ask)."""
        return []

    def serve(self, url: str, out: Printer) -> contextlib.AbstractAsyncContextManager[object]:
        """Run the service on the bus at ``url`` while the block runs.

        Print one ``service`` line once it is up. Errors propagate: ``conat up`` stops and reports them.
        """
        raise NotImplementedError

    async def demo(self, url: str, out: Printer) -> None:
        """A step of the conversation, after the built-in ones: one printed line per step.

        Raises:
            DemoFailed: a wrong answer.
        """

    def hints(self) -> list[str]:
        """Commands to suggest once ``conat up`` is running."""
        return []


def up_extensions() -> list[UpExtension]:
    """The installed :class:`UpExtension` s, in entry point name order."""
    found: list[UpExtension] = []
    entries = sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name)
    for entry in entries:
        try:
            obj = entry.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break conat up
            log.warning("conat up: entry point %r failed to load: %s", entry.name, e)
            continue
        if isinstance(obj, UpExtension):
            found.append(obj)
    return found


def hint_commands() -> list[str]:
    return [
        f'conat req {GREETER} \'{{"name": "greet", "args": ["you"]}}\'',
        f"conat req --many {COUNT} 3",
    ]


def line(label: str, text: str) -> str:
    return f"{label:<{_LABEL}}{text}"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _mib(n: int) -> str:
    return f"{n / _MIB:g} MiB"


async def conversation(url: str, out: Printer) -> None:
    """Talk to the demo service as a client would: typed requests, a stream, pub/sub, a big payload."""
    async with (
        await conat.connect(url, name="conat-up") as client,
        await conat.connect(url, name="conat-up-listener") as listener,
    ):
        greeter = client.service(Greeter, GREETER, timeout=30.0)
        for name in ("Ada", "Grace"):
            started = time.perf_counter()
            greeting = await greeter.greet(name)
            if greeting != f"Hello, {name}!":
                raise DemoFailed(f"greet({name!r}) answered {greeting!r}")
            _request(out, "greet", [name], greeting, _ms(started))

        started = time.perf_counter()
        stats = await greeter.stats()
        _request(out, "stats", [], msgspec.to_builtins(stats), _ms(started))

        await _stream(client, out)
        await _pubsub(client, listener, out)
        await _socket(client, out)
        await _chunked(client, greeter, out)


def _request(out: Printer, method: str, args: list[Any], result: Any, ms: float) -> None:
    shown_args = ", ".join(to_json(a) for a in args)
    out.event(
        line("req", f"{GREETER} {method}({shown_args}) -> {to_json(result)} ({ms:.1f} ms)"),
        event="request",
        subject=GREETER,
        method=method,
        args=args,
        result=result,
        ms=ms,
    )


async def _stream(client: conat.Client, out: Printer) -> None:
    n = 5
    started = time.perf_counter()
    replies = [msg.data async for msg in client.request_many(COUNT, n, timeout=10.0)]
    ms = _ms(started)
    if replies != list(range(1, n + 1)):
        raise DemoFailed(f"request_many({COUNT!r}, {n}) streamed {replies!r}")
    out.event(
        line(
            "stream",
            f"{COUNT} {n} -> {' '.join(map(str, replies))} ({n} replies, then end of stream, {ms:.1f} ms)",
        ),
        event="stream",
        subject=COUNT,
        request=n,
        replies=replies,
        ms=ms,
    )


async def _pubsub(client: conat.Client, listener: conat.Client, out: Printer) -> None:
    count = 3
    async with await listener.subscribe(EVENTS) as events:
        for seq in range(1, count + 1):
            await client.publish(EVENTS, {"seq": seq, "text": f"event {seq}"})
        received = [(await events.next(timeout=10.0)).data for _ in range(count)]
    seqs = [event.get("seq") if isinstance(event, dict) else None for event in received]
    in_order = seqs == list(range(1, count + 1))
    if not in_order:
        raise DemoFailed(f"pub/sub on {EVENTS!r} delivered {received!r}")
    out.event(
        line(
            "pubsub", f"{EVENTS}: published {count}, received {len(received)} in order on another connection"
        ),
        event="pubsub",
        subject=EVENTS,
        published=count,
        received=len(received),
        in_order=in_order,
    )


async def _socket(client: conat.Client, out: Printer) -> None:
    subject = f"{SOCKETS}.conat-up"
    words = ["one", "two", "three"]
    started = time.perf_counter()
    async with await client.socket_connect(subject, timeout=10.0) as sock:
        for word in words:
            await sock.send(word)
        echoed = [(await sock.recv(timeout=10.0)).data for _ in words]
    ms = _ms(started)
    if echoed != [w.upper() for w in words]:
        raise DemoFailed(f"the socket on {subject!r} answered {echoed!r}")
    out.event(
        line("socket", f"{subject}: sent {' '.join(words)} -> {' '.join(echoed)} in order ({ms:.1f} ms)"),
        event="socket",
        subject=subject,
        sent=words,
        received=echoed,
        ms=ms,
    )


async def _chunked(client: conat.Client, greeter: Greeter, out: Printer) -> None:
    data = os.urandom(CHUNKED_BYTES)
    started = time.perf_counter()
    echoed = await greeter.echo(data)
    ms = _ms(started)
    identical = echoed == data
    if not identical:
        raise DemoFailed(f"echo of {CHUNKED_BYTES} bytes came back as {len(echoed)} different bytes")
    digest = hashlib.sha256(echoed).hexdigest()
    out.event(
        line(
            "chunked",
            f"{GREETER} echo({_mib(CHUNKED_BYTES)}) -> {_mib(len(echoed))} back, identical "
            f"(sha256 {digest[:12]}..., server max_payload {_mib(client.max_payload)}, {ms:.1f} ms)",
        ),
        event="chunked",
        subject=GREETER,
        bytes=len(echoed),
        identical=identical,
        sha256=digest,
        max_payload=client.max_payload,
        ms=ms,
    )
