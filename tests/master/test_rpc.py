"""The router of master's APIs: namespaces on one subject, arguments bound and validated before
the method runs, refusals with codes."""

from __future__ import annotations

import pytest

import conat
from conat import RpcRequest
from conat.platform import BadArgument, Limits
from master._rpc import Router

pytestmark = pytest.mark.anyio


class Things:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    async def make(self, caller: str, title: str, count: int = 1, limits: Limits | None = None) -> str:
        self.calls.append((caller, title, count, limits))
        return f"{caller}:{title}x{count}"


@pytest.fixture
def router() -> tuple[Router, Things]:
    things = Things()
    return Router({"things": things}), things


async def test_positional_and_keyword_arguments_are_bound_and_converted(
    router: tuple[Router, Things],
) -> None:
    table, things = router
    assert await table.call("ada", RpcRequest("things.make", ["t"], {"count": 3})) == "ada:tx3"
    await table.call("ada", RpcRequest("things.make", [], {"title": "u", "limits": {"memory_mb": 64}}))
    assert things.calls[-1] == ("ada", "u", 1, Limits(memory_mb=64))


@pytest.mark.parametrize(
    "request_",
    [
        RpcRequest("things.make", [], {}),  # missing
        RpcRequest("things.make", [1], {}),  # wrong type
        RpcRequest("things.make", ["t"], {"colour": "red"}),  # unknown
        RpcRequest("things.make", ["t"], {"title": "u"}),  # twice
        RpcRequest("things.make", ["t", 1, None, "extra"], {}),  # too many
    ],
)
async def test_bad_arguments_are_refused_before_the_method_runs(
    router: tuple[Router, Things], request_: RpcRequest
) -> None:
    table, things = router
    with pytest.raises(BadArgument) as refused:
        await table.call("ada", request_)
    assert refused.value.code == 400 and refused.value.field == "things.make"
    assert things.calls == []


async def test_nested_validation_keeps_its_field_and_unknown_methods_are_404(
    router: tuple[Router, Things],
) -> None:
    table, things = router
    with pytest.raises(BadArgument) as refused:
        await table.call("ada", RpcRequest("things.make", ["t"], {"limits": {"memory_mb": 1}}))
    assert refused.value.field == "limits.memory_mb"
    with pytest.raises(conat.RemoteError) as missing:
        await table.call("ada", RpcRequest("things.remove", [], {}))
    assert missing.value.code == 404
    assert "things.make" in table and "things.remove" not in table and things.calls == []
