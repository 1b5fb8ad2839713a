"""Wire types refuse bad input with a code naming the field (before anything happens)."""

from __future__ import annotations

import msgspec
import pytest

from host import BadArgument, ExecRequest, Limits


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"memory_mb": 1}, "limits.memory_mb"),
        ({"pids": 3}, "limits.pids"),
        ({"cpu_percent": 0}, "limits.cpu_percent"),
        ({"idle_timeout": -1}, "limits.idle_timeout"),
        ({"idle_timeout": float("nan")}, "limits.idle_timeout"),
        ({"file_size_mb": 2**40}, "limits.file_size_mb"),
    ],
)
def test_limits_refuse_out_of_range_values(fields: dict[str, object], field: str) -> None:
    with pytest.raises(BadArgument) as e:
        msgspec.convert(fields, Limits)
    assert e.value.code == 400 and e.value.field == field


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"command": []}, "command"),
        ({"command": ["a\0b"]}, "command"),
        ({"command": ["x"] * 5000}, "command"),
        ({"command": ["x"], "env": {"A=B": "c"}}, "env"),
        ({"command": ["x"], "timeout": 0}, "timeout"),
        ({"command": ["x"], "timeout": 1e9}, "timeout"),
        ({"command": ["x"], "stdin": b"x" * (17 * 1024 * 1024)}, "stdin"),
    ],
)
def test_exec_requests_refuse_bad_input(fields: dict[str, object], field: str) -> None:
    with pytest.raises(BadArgument) as e:
        msgspec.msgpack.decode(msgspec.msgpack.encode(fields), type=ExecRequest)
    assert e.value.field == field


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"memory_mb": 64, "swap": 1}, Limits)
