"""A Hypothesis state machine over the reference model, checking its invariants after every step.

The same rules drive the SQLite engine later (compared with this model operation by operation); here
they check the model against its own contract (persist/_model.py docstring).
"""

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from persist import (
    UNLIMITED,
    Rejected,
    StoredMessage,
    StreamConfig,
    WrongLastSequence,
    message_size,
)
from persist.testing import StreamModel

FAR_PAST = -1e18  # a read this early sees every stored message: nothing has expired yet

limits = st.one_of(st.just(UNLIMITED), st.integers(min_value=1, max_value=12))
configs = st.builds(
    StreamConfig,
    max_msgs=limits,
    max_bytes=st.one_of(st.just(UNLIMITED), st.integers(min_value=1, max_value=60)),
    max_msg_size=st.one_of(st.just(UNLIMITED), st.integers(min_value=1, max_value=20)),
    max_age=st.one_of(st.just(float(UNLIMITED)), st.floats(min_value=0.5, max_value=20)),
    max_msgs_per_second=limits,
    max_bytes_per_second=st.one_of(st.just(UNLIMITED), st.integers(min_value=1, max_value=80)),
    discard=st.sampled_from(["old", "new"]),
    allow_msg_ttl=st.booleans(),
    duplicate_window=st.one_of(st.just(float(UNLIMITED)), st.floats(min_value=0.5, max_value=30)),
    ephemeral=st.booleans(),
    max_memory=st.integers(min_value=1, max_value=80),
)
keys = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "dd"]))
msg_ids = st.one_of(st.none(), st.sampled_from(["m1", "m2", "m3"]))


def stored(m: StreamModel) -> list[StoredMessage]:
    return m.get_all(now=FAR_PAST)


class StreamMachine(RuleBasedStateMachine):
    model: StreamModel
    now: float
    last_seq: int
    accepted: dict[str, tuple[int, float]]

    @initialize(config=configs, start=st.floats(min_value=-100, max_value=100))
    def start(self, config: StreamConfig, start: float) -> None:
        self.model = StreamModel(config)
        self.now = start
        self.last_seq = 0
        self.accepted = {}

    def forget(self) -> None:
        """Mirror the model's pruning of msg-ids: each mutating operation sweeps at ``now`` first."""
        window = self.model.config.duplicate_window
        if window != UNLIMITED:
            self.accepted = {k: v for k, v in self.accepted.items() if self.now < v[1] + window}

    def snapshot(self) -> tuple[Any, ...]:
        m = self.model
        return (m.get_all(now=self.now), m.keys(now=self.now), m.inventory(now=self.now), m.config)

    @rule(
        dt=st.one_of(st.just(0.0), st.floats(min_value=0, max_value=5), st.floats(min_value=-2, max_value=0))
    )
    def tick(self, dt: float) -> None:
        """Time mostly moves forward, sometimes stands still, sometimes steps back (a clock change)."""
        self.now += dt

    @rule(
        key=keys,
        size=st.integers(min_value=0, max_value=25),
        headers=st.one_of(st.none(), st.just({"h": "v"})),
        ttl=st.one_of(st.none(), st.floats(min_value=0.1, max_value=10)),
        cas=st.sampled_from(["none", "right", "wrong"]),
        msg_id=msg_ids,
    )
    def set(
        self,
        key: str | None,
        size: int,
        headers: dict[str, str] | None,
        ttl: float | None,
        cas: str,
        msg_id: str | None,
    ) -> None:
        m = self.model
        now = self.now
        payload = b"p" * size
        current = m.get(now=now, key=key) if key is not None else None
        expected = (current.seq if current else 0) if key is not None else m.inventory(now=now).last_seq
        previous = {"none": None, "right": expected, "wrong": expected + 1}[cas]
        before = self.snapshot()
        self.forget()
        remembered = self.accepted.get(msg_id) if msg_id is not None else None
        fresh = remembered is not None
        try:
            result = m.set(
                payload, now=now, key=key, headers=headers, ttl=ttl, previous_seq=previous, msg_id=msg_id
            )
        except (Rejected, WrongLastSequence) as exc:
            assert not fresh, "a remembered msg-id is a duplicate before any other check"
            if isinstance(exc, WrongLastSequence):
                assert cas == "wrong" and exc.actual == expected
            assert self.snapshot() == before, "a rejected write changes nothing"
            return
        if result.duplicate:
            assert fresh and remembered == (result.seq, result.time)
            assert self.snapshot() == before, "a duplicate msg-id changes nothing"
            return
        assert not fresh
        assert cas != "wrong"
        assert result.seq == self.last_seq + 1 and result.time == now
        self.last_seq = result.seq
        if msg_id is not None:
            self.accepted[msg_id] = (result.seq, result.time)
        got = m.get(now=now, seq=result.seq)
        # A message may expire at once (ttl/max_age shorter than nothing): only check a live one.
        if got is not None:
            assert (got.payload, got.key, got.size) == (payload, key, message_size(key, headers, payload))
            if key is not None:
                assert m.get(now=now, key=key) == got
        if current is not None:
            assert m.get(now=now, seq=current.seq) is None, "a key keeps only its last value"

    @rule(data=st.data(), how=st.sampled_from(["seq", "seqs", "up_to", "key"]))
    def delete(self, data: st.DataObject, how: str) -> None:
        m = self.model
        span = st.integers(min_value=0, max_value=self.last_seq + 2)
        if how == "seq":
            arg: Any = data.draw(span)
        elif how == "seqs":
            arg = data.draw(st.lists(span, max_size=4))
        elif how == "up_to":
            arg = data.draw(span)
        else:
            arg = data.draw(st.sampled_from(["a", "b", "c", "dd"]))
        live_before = {msg.seq for msg in m.get_all(now=self.now)}
        self.forget()
        result = m.delete(now=self.now, **{how: arg})
        assert result.seqs == sorted(result.seqs)
        assert set(result.seqs) <= live_before
        live_after = {msg.seq for msg in m.get_all(now=self.now)}
        assert live_after == live_before - set(result.seqs)
        for seq in result.seqs:
            assert m.get(now=self.now, seq=seq) is None
        if how == "up_to":
            assert all(s > arg for s in live_after)

    @rule()
    def sweep(self) -> None:
        self.model.sweep(self.now)
        self.forget()
        assert stored(self.model) == self.model.get_all(now=self.now), "after a sweep nothing expired remains"

    @rule(config=configs)
    def reconfigure(self, config: StreamConfig) -> None:
        changes = {k: v for k, v in config.to_dict().items() if k != "ephemeral"}
        kept = self.model.config.ephemeral
        assert self.model.update_config(changes, now=self.now) == msgspec.structs.replace(
            config, ephemeral=kept
        )
        self.forget()
        self.check_limits()

    @precondition(lambda self: hasattr(self, "model"))
    @invariant()
    def seqs_increase_and_keys_are_unique(self) -> None:
        messages = stored(self.model)
        seq_list = [msg.seq for msg in messages]
        assert seq_list == sorted(set(seq_list))
        assert all(0 < s <= self.last_seq for s in seq_list)
        inv = self.model.inventory(now=FAR_PAST)
        assert inv.last_seq == self.last_seq
        assert inv.count == len(messages) and inv.bytes == sum(msg.size for msg in messages)
        keyed = [msg.key for msg in messages if msg.key is not None]
        assert len(keyed) == len(set(keyed)), "for each key at most one message"
        live = self.model.get_all(now=self.now)
        assert self.model.keys(now=self.now) == sorted(msg.key for msg in live if msg.key is not None)

    @precondition(lambda self: hasattr(self, "model"))
    @invariant()
    def check_limits(self) -> None:
        """Count and bytes never exceed the limits (discard old evicts; discard new refuses)."""
        config = self.model.config
        inv = self.model.inventory(now=FAR_PAST)
        if config.max_msgs != UNLIMITED:
            assert inv.count <= config.max_msgs
        if config.byte_cap != UNLIMITED:
            assert inv.bytes <= config.byte_cap


StreamMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_stream_model = pytest.mark.filterwarnings("error")(StreamMachine.TestCase)
