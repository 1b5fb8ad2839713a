"""persist's part in ``conat up``: the persist service on the embedded bus, and a demo step.

Registered through the ``conat.up`` entry point group (a :class:`conat.cli._demo.UpExtension`), so
``conat up`` runs the whole system on one machine without conat importing persist. Files go under
``<conat data dir>/sync`` unless ``$CONAT_SYNC*`` say otherwise. The demo step writes and reads back
a stream and a key of the ``hub`` scope.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import conat
from actors import serving_workers
from conat.cli.plugin import DemoFailed, Printer, UpExtension, line, to_json

from ._cli import SUBJECT
from ._client import AKV, AStream
from ._placement import Placement
from ._server import PersistServer
from ._service import PersistService, persist_mappings
from ._workers import Workers

__all__ = ["PersistUp", "up_extension"]

DEMO_STREAM: Final = "demo"
DEMO_KV: Final = "demo-kv"
_UP_STOP_TIMEOUT: Final = 2.0


class PersistUp(UpExtension):
    """persist's part in ``conat up``: the service on the embedded bus, and a demo step."""

    name = "persist"

    def mappings(self, workers: int) -> dict[str, str]:
        return persist_mappings(workers)

    @contextlib.asynccontextmanager
    async def serve(self, url: str, out: Printer) -> AsyncIterator[None]:
        placement = Placement.from_sources()  # <data dir>/sync unless $CONAT_SYNC* say otherwise
        if self.workers > 1:
            async with self._workers(url, out, placement):
                yield
            return
        async with await conat.connect(url, name="conat-up-persist") as client:
            server = await PersistServer(client, placement).start()
            try:
                out.event(
                    line("service", f"{SUBJECT}: persisted streams and KV stores, SQLite files under "
                         f"{placement.root}"),
                    event="service", name="persist", subject=SUBJECT, root=placement.root,
                )  # fmt: skip
                yield
            finally:
                await server.aclose(_UP_STOP_TIMEOUT)

    @contextlib.asynccontextmanager
    async def _workers(self, url: str, out: Printer, placement: Placement) -> AsyncIterator[None]:
        """``workers`` partitioned worker processes (the bus maps persist.*.> for them)."""
        workers = Workers(self.workers, ["--url", url, "--stop-timeout", str(_UP_STOP_TIMEOUT)],
                          stop_timeout=_UP_STOP_TIMEOUT)  # fmt: skip
        async with (
            await conat.connect(url, name="conat-up-persist") as client,
            serving_workers(client, workers, [(SUBJECT, PersistService.spec().subject_for)]),
        ):
            out.event(
                line("service", f"{SUBJECT}: persisted streams and KV stores, {self.workers} workers "
                     f"(pids {workers.pids}), SQLite files under {placement.root}"),
                event="service", name="persist", subject=SUBJECT, root=placement.root,
                workers=self.workers, pids=workers.pids,
            )  # fmt: skip
            yield

    async def demo(self, url: str, out: Printer) -> None:
        async with await conat.connect(url, name="conat-up-persist-demo") as client:
            await _demo_stream(client, out)
            await _demo_kv(client, out)

    def hints(self) -> list[str]:
        return [f"conat stream get hub {DEMO_STREAM}", f"conat kv watch hub {DEMO_KV}"]


up_extension: Final = PersistUp()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


async def _demo_stream(client: conat.Client, out: Printer) -> None:
    s = AStream(client, "hub", DEMO_STREAM, config={"max_msgs": 100}, timeout=10.0)
    sent = [{"n": n, "text": f"message {n}"} for n in (1, 2, 3)]
    started = time.perf_counter()
    seqs = [(await s.publish(value)).seq for value in sent]
    read: list[Any] = []
    async for batch in s.get_all(seqs[0]):
        read.extend(m.value() for m in batch if m.seq in seqs)
    ms = _ms(started)
    if read != sent:
        raise DemoFailed(f"stream hub/{DEMO_STREAM} read back {read!r}, not {sent!r}")
    out.event(
        line("persist", f"hub/{DEMO_STREAM}: published {len(sent)} (seq {seqs[0]}..{seqs[-1]}), "
             f"read back {len(read)} in order ({ms:.1f} ms)"),
        event="persist", scope="hub", stream=DEMO_STREAM, seqs=seqs, values=read, ms=ms,
    )  # fmt: skip


async def _demo_kv(client: conat.Client, out: Printer) -> None:
    store = AKV(client, "hub", DEMO_KV, timeout=10.0)
    key, value = "greeting", "hello from conat up"
    started = time.perf_counter()
    result = await store.set(key, value)
    got = await store.get(key)
    ms = _ms(started)
    if got != value:
        raise DemoFailed(f"kv hub/{DEMO_KV} {key!r} read back {got!r}, not {value!r}")
    out.event(
        line("kv", f"hub/{DEMO_KV}: put {key}={to_json(value)} (seq {result.seq}), get -> "
             f"{to_json(got)} ({ms:.1f} ms)"),
        event="kv", scope="hub", kv=DEMO_KV, key=key, value=got, seq=result.seq, ms=ms,
    )  # fmt: skip
