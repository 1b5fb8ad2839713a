"""StreamFile against StreamModel: the same random operations, the same results, the same contents."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conat.testing import FakeClock
from persist import PersistError, StreamConfig
from persist._engine import StreamFile
from persist.testing import StreamModel

T = TypeVar("T")

KEYS = st.none() | st.sampled_from(["a", "b", "c", "é/ü"])
MSG_IDS = st.none() | st.sampled_from(["m1", "m2", "m3", "m4"])
PAYLOADS = st.sampled_from([b"", b"x", b"hello", b"z" * 40, b"y" * 2000])
HEADERS = st.none() | st.sampled_from([{"h": "v"}, {"a": "1", "b": "22"}])
TTLS = st.none() | st.sampled_from([0.5, 2.0, 7.5])
CONFIG_CHANGES = st.sampled_from(
    [
        {"max_msgs": 3},
        {"max_msgs": -1},
        {"max_bytes": 100},
        {"max_bytes": 5000},
        {"max_bytes": -1},
        {"max_msg_size": 50},
        {"max_msg_size": -1},
        {"max_age": 5.0},
        {"max_age": -1},
        {"discard": "new"},
        {"discard": "old"},
        {"allow_msg_ttl": True},
        {"allow_msg_ttl": False},
        {"max_msgs_per_second": 3},
        {"max_msgs_per_second": -1},
        {"max_bytes_per_second": 3000},
        {"max_bytes_per_second": -1},
        {"duplicate_window": 3.0},
        {"duplicate_window": -1},
        {"max_msgs": 0},  # bad: both refuse
    ]
)


def outcome(call: Any) -> Any:
    """A comparable outcome: the value, or the error's class, code and structured fields."""
    try:
        value = call()
    except PersistError as e:
        fields = {k: v for k, v in vars(e).items() if k not in ("message", "detail")}
        return ("error", type(e).__name__, e.code, fields)
    return ("ok", value)


class EngineVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)
        self.dir = Path(tempfile.mkdtemp(prefix="persist-model-"))
        self.clock = FakeClock()
        self.model = StreamModel(StreamConfig())
        self.engine: StreamFile | None = None

    @initialize(
        config=st.sampled_from(
            [
                StreamConfig(),
                StreamConfig(allow_msg_ttl=True),
                StreamConfig(allow_msg_ttl=True, max_age=3.0, max_msgs=4),
                StreamConfig(max_bytes=3000, discard="new", duplicate_window=2.0),
                StreamConfig(max_msgs_per_second=2, max_bytes_per_second=2500, allow_msg_ttl=True),
            ]
        )
    )
    def start(self, config: StreamConfig) -> None:
        self.model = StreamModel(config)
        self.engine = self.run(
            StreamFile.open(self.dir / "s.db", executor=self.executor, clock=self.clock, config=config)
        )

    @property
    def s(self) -> StreamFile:
        assert self.engine is not None
        return self.engine

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def both(self, model_call: Any, engine_coro: Any) -> None:
        expected = outcome(model_call)
        try:
            got = ("ok", self.run(engine_coro()))
        except PersistError as e:
            fields = {k: v for k, v in vars(e).items() if k not in ("message", "detail")}
            got = ("error", type(e).__name__, e.code, fields)
        if (
            got[0] == "ok"
            and expected[0] == "ok"
            and isinstance(got[1], int)
            and isinstance(expected[1], list)
        ):
            expected = ("ok", len(expected[1]))  # sweep: the engine returns how many
        assert got == expected

    @property
    def now(self) -> float:
        return self.clock.wall()

    # ---- operations ----

    @rule(payload=PAYLOADS, key=KEYS, headers=HEADERS, ttl=TTLS, msg_id=MSG_IDS, cas=st.integers(-2, 3))
    def set(
        self,
        payload: bytes,
        key: str | None,
        headers: dict[str, str] | None,
        ttl: float | None,
        msg_id: str | None,
        cas: int,
    ) -> None:
        previous_seq: int | None = None
        if cas == -1:
            previous_seq = 0
        elif cas >= 0:
            inv = self.model.inventory(now=self.now)
            previous_seq = max(0, inv.last_seq - cas)
        kwargs: dict[str, Any] = {
            "key": key,
            "headers": headers,
            "ttl": ttl,
            "msg_id": msg_id,
            "previous_seq": previous_seq,
        }
        self.both(
            lambda: self.model.set(payload, now=self.now, **kwargs), lambda: self.s.set(payload, **kwargs)
        )

    @rule(back=st.integers(0, 6))
    def delete_seq(self, back: int) -> None:
        seq = max(0, self.model.inventory(now=self.now).last_seq - back)
        self.both(lambda: self.model.delete(now=self.now, seq=seq), lambda: self.s.delete(seq=seq))

    @rule(backs=st.lists(st.integers(0, 6), max_size=4))
    def delete_seqs(self, backs: list[int]) -> None:
        last = self.model.inventory(now=self.now).last_seq
        seqs = [max(0, last - b) for b in backs]
        self.both(lambda: self.model.delete(now=self.now, seqs=seqs), lambda: self.s.delete(seqs=seqs))

    @rule(back=st.integers(0, 6))
    def delete_up_to(self, back: int) -> None:
        up_to = max(0, self.model.inventory(now=self.now).last_seq - back)
        self.both(lambda: self.model.delete(now=self.now, up_to=up_to), lambda: self.s.delete(up_to=up_to))

    @rule(key=st.sampled_from(["a", "b", "c", "é/ü"]), msg_id=MSG_IDS)
    def delete_key(self, key: str, msg_id: str | None) -> None:
        self.both(
            lambda: self.model.delete(now=self.now, key=key, msg_id=msg_id),
            lambda: self.s.delete(key=key, msg_id=msg_id),
        )

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 5.0]))
    def advance(self, dt: float) -> None:
        self.run(self.clock.advance(dt))

    @rule()
    def sweep(self) -> None:
        now = self.now
        self.both(lambda: self.model.sweep(now), lambda: self.s.sweep())

    @rule(changes=CONFIG_CHANGES)
    def config(self, changes: dict[str, object]) -> None:
        self.both(lambda: self.model.update_config(changes, now=self.now), lambda: self.s.set_config(changes))

    @rule()
    def reopen(self) -> None:
        """Close and reopen the file: stored state (config, last seq, dedup) must survive."""
        self.run(self.s.aclose())
        self.engine = self.run(StreamFile.open(self.dir / "s.db", executor=self.executor, clock=self.clock))
        # Rate buckets live in memory: a reopened engine starts with full buckets, so does the model's
        # after a rate change; reset both by re-applying the rates.
        config = self.model.config
        for name in ("max_msgs_per_second", "max_bytes_per_second"):
            value = getattr(config, name)
            if value != -1:
                self.model.update_config({name: -1}, now=self.now)
                self.model.update_config({name: value}, now=self.now)
                self.run(self.s.set_config({name: -1}))
                self.run(self.s.set_config({name: value}))

    # ---- contents ----

    @invariant()
    def same_contents(self) -> None:
        now = self.now
        expected = self.model.get_all(now=now)

        async def read() -> list[Any]:
            return [m async for batch in self.s.get_all(batch=3) for m in batch]

        got = self.run(read())
        assert got == expected  # one message type: the engine's reads and the model's compare whole
        assert self.run(self.s.keys()) == self.model.keys(now=now)
        assert self.run(self.s.inventory()) == self.model.inventory(now=now)
        assert self.s.config() == self.model.config
        for key in ("a", "é/ü"):
            m = self.run(self.s.get(key=key))
            e = self.model.get(now=now, key=key)
            assert (m.seq if m else None) == (e.seq if e else None)

    def teardown(self) -> None:
        if self.engine is not None:
            self.run(self.engine.aclose())
        self.executor.shutdown(wait=True)
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)


EngineVersusModel.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_engine_matches_model = EngineVersusModel.TestCase
