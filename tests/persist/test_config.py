"""StreamConfig: defaults, the -1 convention, validation naming the field, and merge."""

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from persist import MAX_MESSAGE_BYTES, UNLIMITED, BadConfig, StreamConfig

LIMITS = [
    "max_msgs",
    "max_age",
    "max_bytes",
    "max_msg_size",
    "max_msgs_per_second",
    "max_bytes_per_second",
    "duplicate_window",
]


def test_defaults() -> None:
    config = StreamConfig()
    assert config.sync == "full"
    assert config.discard == "old"
    assert not config.allow_msg_ttl
    assert not config.ephemeral
    assert config.max_memory > 0
    for name in LIMITS:
        if name != "duplicate_window":
            assert getattr(config, name) == UNLIMITED
    assert config.duplicate_window > 0


@pytest.mark.parametrize("name", LIMITS)
@pytest.mark.parametrize("value", [0, -2, -0.5])
def test_zero_and_negative_limits_are_refused(name: str, value: float) -> None:
    with pytest.raises(BadConfig) as info:
        StreamConfig.from_dict({name: value})
    assert info.value.field == name
    assert info.value.code == "bad-config"


@pytest.mark.parametrize("name", LIMITS)
def test_unlimited_and_positive(name: str) -> None:
    assert getattr(StreamConfig.from_dict({name: -1}), name) == UNLIMITED
    assert getattr(StreamConfig.from_dict({name: 7}), name) == 7


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"max_msgs": "10"}, "max_msgs"),
        ({"max_msgs": True}, "max_msgs"),
        ({"max_msgs": 1.5}, "max_msgs"),
        ({"max_age": float("inf")}, "max_age"),
        ({"max_age": float("nan")}, "max_age"),
        ({"discard": "oldest"}, "discard"),
        ({"sync": "extra"}, "sync"),
        ({"allow_msg_ttl": 1}, "allow_msg_ttl"),
        ({"ephemeral": "yes"}, "ephemeral"),
        ({"max_memory": -1}, "max_memory"),
        ({"max_memory": 0}, "max_memory"),
        ({"max_msg_size": MAX_MESSAGE_BYTES + 1}, "max_msg_size"),
        ({"max_mesages": 3}, "max_mesages"),
    ],
)
def test_bad_fields_are_named(data: dict[str, Any], field: str) -> None:
    with pytest.raises(BadConfig) as info:
        StreamConfig.from_dict(data)
    assert info.value.field == field
    assert field in str(info.value)


def test_direct_construction_checks_types_too() -> None:
    with pytest.raises(BadConfig, match="max_bytes"):
        StreamConfig(max_bytes="many")  # type: ignore[arg-type]
    with pytest.raises(BadConfig, match="allow_msg_ttl"):
        StreamConfig(allow_msg_ttl=None)  # type: ignore[arg-type]


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        StreamConfig().max_msgs = 3  # type: ignore[misc]


def test_merge() -> None:
    config = StreamConfig(max_msgs=10, discard="new")
    merged = config.merge({"max_msgs": 20, "sync": "normal"})
    assert merged == StreamConfig(max_msgs=20, discard="new", sync="normal")
    assert config.max_msgs == 10
    with pytest.raises(BadConfig) as info:
        config.merge({"nope": 1})
    assert info.value.field == "nope"
    with pytest.raises(BadConfig) as info:
        config.merge({"max_msgs": 0})
    assert info.value.field == "max_msgs"
    with pytest.raises(BadConfig) as info:
        config.merge({"ephemeral": True})
    assert info.value.field == "ephemeral"
    assert config.merge({"ephemeral": False}) == config
    with pytest.raises(BadConfig):
        config.merge([("max_msgs", 1)])  # type: ignore[arg-type]


def test_byte_cap() -> None:
    assert StreamConfig(max_bytes=100).byte_cap == 100
    assert StreamConfig().byte_cap == UNLIMITED
    assert StreamConfig(ephemeral=True, max_memory=50).byte_cap == 50
    assert StreamConfig(ephemeral=True, max_memory=50, max_bytes=20).byte_cap == 20


def test_round_trip_through_msgpack() -> None:
    config = StreamConfig(max_msgs=3, max_age=1.5, discard="new", allow_msg_ttl=True, sync="off")
    wire = msgspec.msgpack.encode(config)
    assert msgspec.msgpack.decode(wire, type=StreamConfig) == config
    assert StreamConfig.from_dict(config.to_dict()) == config


limit_values = st.one_of(st.integers(min_value=-5, max_value=10**12), st.floats(allow_nan=True))
anything = st.one_of(st.none(), st.booleans(), st.text(max_size=5), limit_values)


@given(st.dictionaries(st.sampled_from([*LIMITS, "discard", "sync", "max_memory", "bogus"]), anything))
def test_validation_is_total(data: dict[str, object]) -> None:
    """Any input gives a valid config or BadConfig naming a field of the input; nothing else escapes."""
    try:
        config = StreamConfig.from_dict(data)
    except BadConfig as exc:
        assert exc.field in data
        return
    for name in LIMITS:
        value = getattr(config, name)
        assert value == UNLIMITED or value > 0
    assert config.discard in ("old", "new")
    assert config.sync in ("full", "normal", "off")
    assert StreamConfig.from_dict(config.to_dict()) == config
