"""Wire codes back to typed errors: the registry's rules, and every path a reply can take on a real bus.

A class registered for its code comes back to the caller as itself (rebuilt from the reply's fields)
and as a RemoteError; any other code, and any foreign service's reply, stays a plain RemoteError.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

import conat
from conat import ConatError, RemoteError, error_fields, rebuild_error, register_error

pytestmark = pytest.mark.anyio


@register_error
class Overdrawn(ConatError):
    """A test error with fields, registered for its code."""

    code = "test-overdrawn"

    def __init__(self, account: str, balance: int, wanted: int) -> None:
        self.account = account
        self.balance = balance
        self.wanted = wanted
        super().__init__(f"account {account} has {balance}, {wanted} wanted")


class Unregistered(ConatError):
    code = "test-unregistered"

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"unregistered: {what}")


class PerInstance(ConatError):
    """A class whose code is per instance (like the file server's FsError)."""

    def __init__(self, code: str, path: str) -> None:
        self.code = code
        self.path = path
        super().__init__(f"{code}: {path}")


register_error(PerInstance, codes=["TEST_ENOENT", "TEST_EEXIST"])


# ---- pure ----------------------------------------------------------------------------------------


def test_a_registered_error_round_trips_through_its_fields_as_json() -> None:
    sent = Overdrawn("a-1", 5, 7)
    fields = msgspec.json.decode(msgspec.json.encode(error_fields(sent)))  # what crosses the wire
    got = rebuild_error(sent.code, str(sent), subject="bank.api", data=fields)
    assert isinstance(got, Overdrawn) and isinstance(got, RemoteError)
    assert type(got).__name__ == "Overdrawn"
    assert (got.account, got.balance, got.wanted) == ("a-1", 5, 7)
    assert (got.code, got.remote_message, got.subject, got.data) == (
        "test-overdrawn",
        "account a-1 has 5, 7 wanted",
        "bank.api",
        {"account": "a-1", "balance": 5, "wanted": 7},
    )
    assert str(got) == str(sent)  # the class builds its own message, as on the handler's side
    assert error_fields(got) == error_fields(sent)  # a proxy passing it on sends the same fields


def test_a_per_instance_code_is_given_by_the_wire_when_the_fields_lack_it() -> None:
    got = rebuild_error("TEST_EEXIST", "TEST_EEXIST: a", data={"path": "a"})
    assert isinstance(got, PerInstance) and (got.code, got.path) == ("TEST_EEXIST", "a")


@pytest.mark.parametrize(
    ("code", "data"),
    [
        (429, None),  # a number is anyone's status
        ("test-unregistered", {"what": "x"}),  # not registered
        ("test-overdrawn", None),  # no fields: nothing to rebuild from
        ("test-overdrawn", {"account": "a"}),  # fields missing (an older peer)
    ],
)
def test_anything_else_is_a_plain_remote_error_with_its_code_and_fields(code: Any, data: Any) -> None:
    got = rebuild_error(code, "text", subject="s", data=data)
    assert type(got) is RemoteError
    assert (got.code, got.remote_message, got.subject, got.data) == (code, "text", "s", dict(data or {}))


def test_a_newer_peers_extra_fields_are_kept_as_data_not_fatal() -> None:
    fields = {"account": "a", "balance": 1, "wanted": 2, "currency": "EUR"}
    got = rebuild_error("test-overdrawn", "t", data=fields)
    assert isinstance(got, Overdrawn) and got.data == fields and not hasattr(got, "currency")


def test_a_rebuilt_error_survives_copy_and_pickle() -> None:
    got = rebuild_error("test-overdrawn", "t", subject="s", data={"account": "a", "balance": 1, "wanted": 2})
    for clone in (copy.copy(got), pickle.loads(pickle.dumps(got))):
        assert isinstance(clone, Overdrawn) and isinstance(clone, RemoteError)
        assert (clone.account, clone.code, clone.subject) == ("a", "test-overdrawn", "s")


def test_registration_rules() -> None:
    with pytest.raises(TypeError, match="only symbolic codes"):
        register_error(type("Numeric", (ConatError,), {"code": 418}))
    with pytest.raises(ValueError, match=r"already registered for .*Overdrawn"):
        register_error(type("Clash", (ConatError,), {"code": "test-overdrawn"}))
    with pytest.raises(TypeError, match="not a RemoteError"):
        register_error(type("Remote", (RemoteError,), {}))
    with pytest.raises(TypeError):
        register_error(ValueError)  # type: ignore[type-var]
    assert register_error(Overdrawn) is Overdrawn  # again: harmless


def test_error_reply_carries_a_registered_errors_fields_and_nothing_of_others() -> None:
    fields = {"account": "a", "balance": 1, "wanted": 2}
    assert conat.error_reply(Overdrawn("a", 1, 2)) == ("test-overdrawn", "account a has 1, 2 wanted", fields)
    assert conat.error_reply(Unregistered("x")) == ("test-unregistered", "unregistered: x", {})
    assert conat.error_reply(KeyError("k")) == (conat.INTERNAL, "KeyError: 'k'", {})


# ---- on a real bus -------------------------------------------------------------------------------


class Bank:
    __conat_namespace__ = "bank"

    async def withdraw(self, account: str, amount: int) -> int:
        raise Overdrawn(account, 5, amount)

    async def other(self) -> None:
        raise Unregistered("thing")


async def test_request_proxy_and_request_many_raise_the_registered_class(nats_server: Any) -> None:
    async with await conat.connect(nats_server.url) as client:
        await client.serve("test.bank", Bank())
        bank = client.service(Bank, "test.bank")
        with pytest.raises(Overdrawn) as e:
            await bank.withdraw("a-1", 9)
        assert isinstance(e.value, RemoteError) and e.value.subject == "test.bank"
        assert (e.value.account, e.value.balance, e.value.wanted) == ("a-1", 5, 9)
        with pytest.raises(RemoteError) as plain:  # not registered: as before
            await bank.other()
        assert type(plain.value) is RemoteError and plain.value.code == "test-unregistered"

        async def handler(msg: conat.Message) -> None:
            await msg.respond(1)
            await conat.respond_error(msg, *conat.error_reply(Overdrawn("b", 0, 1)))

        await client.subscribe("test.many", callback=handler)
        replies = client.request_many("test.many", None, timeout=5)
        assert (await anext(replies)).data == 1
        with pytest.raises(Overdrawn) as many:  # the stream ends with the handler's typed error
            await anext(replies)
        assert many.value.account == "b"


async def test_a_foreign_micro_error_with_a_registered_code_stays_a_remote_error(nats_server: Any) -> None:
    """Only conat's Conat-Error replies are ours to interpret; a foreign service's code is its own."""
    async with await conat.connect(nats_server.url) as client:
        foreign = await nats.connect(nats_server.url)
        try:

            async def micro(msg: Msg) -> None:
                headers = {"Nats-Service-Error": "test-overdrawn", "Nats-Service-Error-Code": "test-overdrawn"}
                await foreign.publish(msg.reply, b"", headers=headers)

            await foreign.subscribe("test.foreign", cb=micro)
            await foreign.flush()
            with pytest.raises(RemoteError) as e:
                await client.request("test.foreign", b"x", encoding="raw", timeout=5)
            assert type(e.value) is RemoteError and e.value.code == "test-overdrawn"
        finally:
            await foreign.close()
