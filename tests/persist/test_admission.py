"""persist._admission: token buckets, rates, the admission of a write, eviction and trim (all pure)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persist import UNLIMITED, Rejected, StreamConfig, WrongLastSequence
from persist._admission import Rates, admit, byte_limit, expired_through, trim
from persist._checks import SetArgs, check_set_args


def write(
    size: int = 1, *, key: str | None = None, ttl: float | None = None, previous_seq: int | None = None
) -> SetArgs:
    """Checked arguments of a write whose message is ``size`` bytes (key included)."""
    payload = b"x" * (size - (len(key) if key else 0))
    return check_set_args(payload, key, None, ttl, previous_seq, None)


def stored(*sizes: int, first: int = 1) -> list[tuple[int, int]]:
    """``(seq, size)`` of messages with consecutive seqs from ``first``."""
    return [(first + i, size) for i, size in enumerate(sizes)]


def run_admit(
    config: StreamConfig,
    args: SetArgs,
    oldest: list[tuple[int, int]],
    *,
    rates: Rates | None = None,
    replaced: tuple[int, int] | None = None,
    last_seq: int | None = None,
    now: float = 0.0,
) -> list[int]:
    return admit(
        config,
        rates if rates is not None else Rates(config),
        args,
        now=now,
        replaced=replaced,
        last_seq=last_seq if last_seq is not None else (oldest[-1][0] if oldest else 0),
        count=len(oldest),
        nbytes=sum(size for _, size in oldest),
        oldest=oldest,
    )


class Lazy:
    """An ``oldest`` iterable that records how many items were read."""

    def __init__(self, items: list[tuple[int, int]]) -> None:
        self.items = items
        self.read = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for item in self.items:
            self.read += 1
            yield item


def bucket_state(rates: Rates) -> tuple[object, ...]:
    return tuple(None if b is None else (b.tokens, b.stamp) for b in (rates.msgs, rates.bytes))


# ---- Rates, byte_limit ----------------------------------------------------------------------------------


def test_rates_unlimited_have_no_bucket() -> None:
    r = Rates(StreamConfig())
    assert (r.msgs, r.bytes) == (None, None)
    r.check(StreamConfig(), 0.0, 10**9)
    r.take(0.0, 10**9)


def test_rates_check_names_the_limit_and_value() -> None:
    config = StreamConfig(max_msgs_per_second=2, max_bytes_per_second=100)
    r = Rates(config)
    r.check(config, 0.0, 100)
    with pytest.raises(Rejected) as e:
        r.check(config, 0.0, 101)
    assert (e.value.code, e.value.limit, e.value.value) == ("reject", "max_bytes_per_second", 100)
    assert "101 bytes" in e.value.detail
    r.take(0.0, 10)
    r.take(0.0, 10)
    with pytest.raises(Rejected) as e:
        r.check(config, 0.0, 1)
    assert (e.value.limit, e.value.value) == ("max_msgs_per_second", 2)
    assert r.bytes is not None and r.bytes.available(0.0) == 80
    r.check(config, 0.5, 1)  # one write's worth refilled after half a second


def test_rates_reconfigured_keeps_buckets_only_if_rates_are_unchanged() -> None:
    old = StreamConfig(max_msgs_per_second=1)
    r = Rates(old)
    r.take(0.0, 1)
    assert r.reconfigured(old, old.merge({"max_msgs": 5})) is r
    fresh = r.reconfigured(old, old.merge({"max_msgs_per_second": 2}))
    assert fresh is not r and fresh.msgs is not None and fresh.msgs.available(0.0) == 2
    fresh = r.reconfigured(old, old.merge({"max_bytes_per_second": 9}))
    assert fresh.bytes is not None and fresh.bytes.available(0.0) == 9


def test_rates_copy_is_independent() -> None:
    config = StreamConfig(max_msgs_per_second=3, max_bytes_per_second=30)
    r = Rates(config)
    c = r.copy()
    c.take(0.0, 10)
    assert bucket_state(r) == ((3, None), (30, None))
    assert bucket_state(c) == ((2, 0.0), (20, 0.0))
    assert Rates(StreamConfig()).copy().msgs is None


@pytest.mark.parametrize(
    ("config", "limit"),
    [
        (StreamConfig(max_bytes=10), "max_bytes"),
        (StreamConfig(max_bytes=10, max_memory=5), "max_bytes"),  # max_memory: ephemeral only
        (StreamConfig(ephemeral=True), "max_memory"),
        (StreamConfig(ephemeral=True, max_memory=5, max_bytes=10), "max_memory"),
        (StreamConfig(ephemeral=True, max_memory=10, max_bytes=5), "max_bytes"),
        (StreamConfig(ephemeral=True, max_memory=10, max_bytes=10), "max_bytes"),
    ],
)
def test_byte_limit(config: StreamConfig, limit: str) -> None:
    assert byte_limit(config) == limit


# ---- admit: the order of checks and each refusal ----------------------------------------------------


def test_admit_accepts_and_takes_tokens() -> None:
    config = StreamConfig(max_msgs_per_second=5, max_bytes_per_second=50)
    rates = Rates(config)
    assert run_admit(config, write(7), stored(1, 2), rates=rates, now=3.0) == []
    assert bucket_state(rates) == ((4, 3.0), (43, 3.0))


def test_admit_ttl_needs_allow_msg_ttl() -> None:
    with pytest.raises(Rejected) as e:
        run_admit(StreamConfig(), write(ttl=5), [])
    assert (e.value.limit, e.value.value) == ("allow_msg_ttl", False)
    assert run_admit(StreamConfig(allow_msg_ttl=True), write(ttl=5), []) == []


def test_admit_max_msg_size() -> None:
    config = StreamConfig(max_msg_size=4)
    assert run_admit(config, write(4), []) == []
    with pytest.raises(Rejected) as e:
        run_admit(config, write(5), [])
    assert (e.value.limit, e.value.value) == ("max_msg_size", 4)
    assert "5 bytes" in e.value.detail


def test_admit_compare_and_set_on_the_stream() -> None:
    assert run_admit(StreamConfig(), write(previous_seq=7), stored(1), last_seq=7) == []
    with pytest.raises(WrongLastSequence) as e:
        run_admit(StreamConfig(), write(previous_seq=6), stored(1), last_seq=7)
    assert (e.value.code, e.value.expected, e.value.actual, e.value.key) == (
        "wrong-last-sequence",
        6,
        7,
        None,
    )


def test_admit_compare_and_set_on_a_key() -> None:
    assert run_admit(StreamConfig(), write(2, key="k", previous_seq=0), stored(1), last_seq=9) == []
    with pytest.raises(WrongLastSequence) as e:
        run_admit(StreamConfig(), write(2, key="k", previous_seq=9), stored(1), last_seq=9)
    assert (e.value.expected, e.value.actual, e.value.key) == (9, 0, "k")  # a new key's seq is 0
    assert run_admit(StreamConfig(), write(2, key="k", previous_seq=4), stored(1), replaced=(4, 1)) == []
    with pytest.raises(WrongLastSequence) as e:
        run_admit(StreamConfig(), write(2, key="k", previous_seq=0), stored(1), replaced=(4, 1))
    assert e.value.actual == 4


def test_admit_checks_in_order() -> None:
    """ttl, then max_msg_size, then compare-and-set, then rates, then capacity."""
    config = StreamConfig(max_msg_size=1, max_msgs_per_second=1, max_msgs=1, discard="new")
    rates = Rates(config)
    rates.take(0.0, 1)
    full = stored(1)

    def refusal(args: SetArgs, cfg: StreamConfig = config) -> str:
        with pytest.raises((Rejected, WrongLastSequence)) as e:
            run_admit(cfg, args, full, rates=rates if cfg is config else Rates(cfg), last_seq=5)
        return e.value.limit if isinstance(e.value, Rejected) else "cas"

    assert refusal(write(2, ttl=1, previous_seq=0)) == "allow_msg_ttl"
    assert refusal(write(2, previous_seq=0)) == "max_msg_size"
    assert refusal(write(1, previous_seq=0)) == "cas"
    assert refusal(write(1)) == "max_msgs_per_second"
    assert refusal(write(1), config.merge({"max_msgs_per_second": UNLIMITED})) == "max_msgs"


def test_admit_message_larger_than_the_whole_stream() -> None:
    for discard in ("old", "new"):
        config = StreamConfig(max_bytes=10, discard=discard)
        with pytest.raises(Rejected) as e:
            run_admit(config, write(11), [])
        assert (e.value.limit, e.value.value) == ("max_bytes", 10)
        assert "more than the whole stream" in e.value.detail
    with pytest.raises(Rejected) as e:
        run_admit(StreamConfig(ephemeral=True, max_memory=10), write(11), [])
    assert (e.value.limit, e.value.value) == ("max_memory", 10)


def test_admit_discard_new_when_full() -> None:
    config = StreamConfig(max_msgs=2, max_bytes=10, discard="new")
    with pytest.raises(Rejected) as e:
        run_admit(config, write(1), stored(1, 1))
    assert (e.value.limit, e.value.value) == ("max_msgs", 2)
    assert "discard new" in e.value.detail
    with pytest.raises(Rejected) as e:
        run_admit(config, write(3), stored(8))
    assert (e.value.limit, e.value.value) == ("max_bytes", 10)
    config = StreamConfig(ephemeral=True, max_memory=10, discard="new")
    with pytest.raises(Rejected) as e:
        run_admit(config, write(3), stored(8))
    assert (e.value.limit, e.value.value) == ("max_memory", 10)


def test_admit_replacing_a_key_frees_its_message_first() -> None:
    config = StreamConfig(max_msgs=2, max_bytes=10, discard="new")
    assert run_admit(config, write(5, key="k"), stored(1, 5), replaced=(2, 5)) == []


def test_admit_discard_old_evicts_the_oldest_reading_only_what_it_needs() -> None:
    config = StreamConfig(max_msgs=3)
    oldest = Lazy(stored(1, 1, 1, 1, 1))  # already over (after a config change): evict until it fits
    evict = admit(
        config, Rates(config), write(1), now=0.0, replaced=None, last_seq=5, count=5, nbytes=5, oldest=oldest
    )
    assert evict == [1, 2, 3]
    assert oldest.read == 3
    untouched = Lazy(stored(1))
    evict = admit(
        config,
        Rates(config),
        write(1),
        now=0.0,
        replaced=None,
        last_seq=1,
        count=1,
        nbytes=1,
        oldest=untouched,
    )
    assert evict == [] and untouched.read == 0


def test_admit_discard_old_by_bytes_skips_the_replaced_message() -> None:
    config = StreamConfig(max_bytes=10)
    assert run_admit(config, write(6), stored(3, 3, 3)) == [1, 2]
    # seq 1 is the key's message, replaced anyway: it is skipped, not evicted
    assert run_admit(config, write(7, key="k"), stored(3, 3, 3), replaced=(1, 3)) == [2]


def test_admit_ephemeral_evicts_for_max_memory() -> None:
    config = StreamConfig(ephemeral=True, max_memory=10)
    assert run_admit(config, write(6), stored(4, 4)) == [1]


# ---- admit: properties --------------------------------------------------------------------------------

limits = st.one_of(st.just(UNLIMITED), st.integers(1, 20))


@st.composite
def admissions(
    draw: st.DrawFn,
) -> tuple[StreamConfig, SetArgs, list[tuple[int, int]], tuple[int, int] | None]:
    config = StreamConfig(
        max_msgs=draw(limits),
        max_bytes=draw(limits),
        max_msg_size=draw(st.one_of(st.just(UNLIMITED), st.integers(10, 20))),
        max_msgs_per_second=draw(limits),
        max_bytes_per_second=draw(st.one_of(st.just(UNLIMITED), st.integers(1, 60))),
        discard=draw(st.sampled_from(["old", "new"])),
        allow_msg_ttl=draw(st.booleans()),
        ephemeral=(ephemeral := draw(st.booleans())),
        max_memory=draw(st.integers(1, 40)) if ephemeral else 1 << 20,
    )
    oldest = stored(*draw(st.lists(st.integers(1, 12), max_size=12)), first=draw(st.integers(1, 5)))
    replaced = draw(st.none() | st.sampled_from(oldest)) if oldest else None
    key = "k" if replaced is not None or draw(st.booleans()) else None
    args = write(
        draw(st.integers(1, 15)),
        key=key,
        ttl=5.0 if draw(st.integers(0, 9)) == 0 else None,  # rarely: most refusals should be for room
        previous_seq=draw(st.integers(0, 20)) if draw(st.integers(0, 9)) == 0 else None,
    )
    return config, args, oldest, replaced


def used_rates(config: StreamConfig, takes: list[tuple[float, int]]) -> Rates:
    rates = Rates(config)
    for now, size in takes:
        rates.take(now, size)
    return rates


takes = st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(0, 30)), max_size=5)


@given(admissions(), takes)
@settings(max_examples=400, deadline=None)
def test_an_accepted_write_fits_and_a_refused_one_changes_nothing(
    case: tuple[StreamConfig, SetArgs, list[tuple[int, int]], tuple[int, int] | None],
    history: list[tuple[float, int]],
) -> None:
    config, args, oldest, replaced = case
    rates = used_rates(config, history)
    before = bucket_state(rates)
    lazy = Lazy(oldest)
    try:
        evict = admit(
            config,
            rates,
            args,
            now=2.0,
            replaced=replaced,
            last_seq=oldest[-1][0] if oldest else 0,
            count=len(oldest),
            nbytes=sum(size for _, size in oldest),
            oldest=lazy,
        )
    except (Rejected, WrongLastSequence):
        assert bucket_state(rates) == before  # a refused write takes no tokens
        return
    gone = set(evict) | ({replaced[0]} if replaced else set())
    kept = [(seq, size) for seq, size in oldest if seq not in gone]
    count, nbytes = len(kept) + 1, sum(size for _, size in kept) + args.size
    if config.discard == "old":  # never above the limits once the write is in
        assert config.max_msgs == UNLIMITED or count <= config.max_msgs
        assert config.byte_cap == UNLIMITED or nbytes <= config.byte_cap
    else:
        assert evict == []
    assert evict == sorted(evict) and (replaced is None or replaced[0] not in evict)
    candidates = [seq for seq, _ in oldest if replaced is None or seq != replaced[0]]
    assert evict == candidates[: len(evict)]  # the oldest first
    assert lazy.read <= len(evict) + (1 if replaced else 0)  # read only as far as needed
    if evict:  # and no more than needed: keeping the last one evicted would not fit
        last = dict(oldest)[evict[-1]]
        over_msgs = config.max_msgs != UNLIMITED and count + 1 > config.max_msgs
        over_bytes = config.byte_cap != UNLIMITED and nbytes + last > config.byte_cap
        assert over_msgs or over_bytes


# ---- trim ----------------------------------------------------------------------------------------------


def test_trim_removes_the_oldest_until_the_stream_fits() -> None:
    assert trim(StreamConfig(max_msgs=2), 4, 4, stored(1, 1, 1, 1)) == [1, 2]
    assert trim(StreamConfig(max_bytes=5), 3, 9, stored(3, 3, 3)) == [1, 2]
    assert trim(StreamConfig(ephemeral=True, max_memory=5), 3, 9, stored(3, 3, 3)) == [1, 2]
    assert trim(StreamConfig(max_msgs=2, max_bytes=100), 3, 3, stored(1, 1, 1, first=7)) == [7]


def test_trim_ignores_discard() -> None:
    assert trim(StreamConfig(max_msgs=1, discard="new"), 2, 2, stored(1, 1)) == [1]


def test_trim_reads_nothing_when_the_stream_fits() -> None:
    oldest = Lazy(stored(1, 1))
    assert trim(StreamConfig(max_msgs=2), 2, 2, oldest) == []
    assert oldest.read == 0
    oldest = Lazy(stored(1, 1, 1, 1))
    assert trim(StreamConfig(max_msgs=2), 4, 4, oldest) == [1, 2]
    assert oldest.read == 2


@given(
    max_msgs=limits,
    max_bytes=limits,
    ephemeral=st.booleans(),
    max_memory=st.integers(1, 40),
    sizes=st.lists(st.integers(0, 12), max_size=20),
)
@settings(max_examples=300)
def test_trim_is_idempotent_and_leaves_a_stream_that_fits(
    max_msgs: int, max_bytes: int, ephemeral: bool, max_memory: int, sizes: list[int]
) -> None:
    config = StreamConfig(max_msgs=max_msgs, max_bytes=max_bytes, ephemeral=ephemeral, max_memory=max_memory)
    oldest = stored(*sizes)
    removed = trim(config, len(oldest), sum(sizes), oldest)
    assert removed == [seq for seq, _ in oldest[: len(removed)]]  # a prefix
    kept = oldest[len(removed) :]
    count, nbytes = len(kept), sum(size for _, size in kept)
    assert max_msgs == UNLIMITED or count <= max_msgs
    assert config.byte_cap == UNLIMITED or nbytes <= config.byte_cap
    assert trim(config, count, nbytes, kept) == []  # idempotent


# ---- expiry as an index range ------------------------------------------------------------------------

_times = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
_ages = st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(_times, _ages, _times)
@settings(max_examples=2000)
def test_expired_through_is_the_models_rule_exactly(now: float, age: float, t: float) -> None:
    bound = expired_through(now, age)
    assert (t <= bound) == (t + age <= now)
    assert bound + age <= now < math.nextafter(bound, math.inf) + age  # the largest such float


@given(_ages, st.floats(min_value=-1.0, max_value=1.0))
@settings(max_examples=500)
def test_expired_through_at_epoch_times(age: float, jitter: float) -> None:
    """Where the old relative slack (1e-6 of an epoch time: ~30 minutes) hid the bug."""
    now = time.time() + jitter
    bound = expired_through(now, age)
    assert bound + age <= now < math.nextafter(bound, math.inf) + age
    assert abs(bound - (now - age)) <= 4 * math.ulp(max(now, age))
