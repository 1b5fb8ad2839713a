"""The contract between conat/_transport.py and nats-py's private members, on the installed nats-py.

conat's transport overrides nats-py's ``_process_msg``, builds ``Subscription`` objects itself, uses
about twenty private members and parses nats-py's error texts (its docstring lists them and why).
nats-py is pinned to a minor version; when an upgrade moves or changes one of them, a test here fails
and names the member and what conat uses it for, instead of some unrelated test failing obscurely.
:func:`test_the_contract_lists_every_private_member_the_transport_uses` reads the transport's
source, so a private member used without being listed here fails too.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import NoneType
from typing import Any

import nats
import nats.aio.client as nats_client
import nats.errors as nats_errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription as NatsSubscription
from nats.nuid import NUID
from nats.protocol.parser import Parser

import conat
from conat._transport import PermissionViolation, Transport, TransportEvents, _Connection, _is_auth_refusal

pytestmark = pytest.mark.anyio

VERSION = metadata.version("nats-py")
TRANSPORT = Path(conat.__file__).parent / "_transport.py"


@dataclass(frozen=True)
class Member:
    """One private member of nats-py that the transport uses.

    Attributes:
        name: the member (of :class:`nats.aio.client.Client` unless ``owner`` says otherwise).
        why: what conat uses it for (shown when it breaks).
        params: for a method, its parameters after ``self``, in order (more are allowed if they
            have defaults); ``None`` for an attribute.
        coroutine: whether the method must be a coroutine function.
        kind: for an attribute, the type(s) it has on a client that is not connected yet.
    """

    name: str
    why: str
    params: tuple[str, ...] | None = None
    coroutine: bool = True
    kind: type | tuple[type, ...] | None = None
    owner: type = NatsClient


CONTRACT: tuple[Member, ...] = (
    Member("_process_msg", "override the parser's hook for every MSG/HMSG (direct dispatch)",
           ("sid", "subject", "reply", "data", "headers")),
    Member("__init__", "build subscriptions the way nats-py's subscribe() does", ("conn", "id", "subject", "queue"),
           coroutine=False, owner=NatsSubscription),
    Member("_subs", "register a subscription so that a reconnect re-sends it", kind=dict),
    Member("_sid", "number a new subscription", kind=int),
    Member("_send_subscribe", "send a new subscription's SUB", ("sub",)),
    Member("_send_unsubscribe", "send UNSUB (unsubscribe, drain)", ("sid", "limit")),
    Member("_pending", "queue a PUB/HPUB command for the flusher", kind=list),
    Member("_pending_data_size", "account for a queued command", kind=int),
    Member("_max_pending_size", "refuse to buffer past nats-py's limit while reconnecting", kind=int),
    Member("_flush_queue", "kick nats-py's flusher after queueing a command", kind=(NoneType, asyncio.Queue)),
    Member("_flush_pending", "kick (or force) nats-py's flusher", ("force_flush",)),
    Member("_flusher_task", "kick the flusher only while it runs", kind=(NoneType, asyncio.Task)),
    Member("_send_command", "queue flush()'s PING behind what is pending", ("cmd", "priority")),
    Member("_pongs", "wait for the PONG that answers flush()'s PING", kind=list),
    Member("_nuid", "make unique tokens (inboxes, transfer ids)", kind=NUID),
    Member("_server_info", "read the server's name from INFO before CONNECT (credentials)", kind=dict),
    Member("_transport", "close the socket nats-py leaves open after a refused connect", kind=NoneType),
)  # fmt: skip

OURS = ("direct", "header_block", "headers_of", "_parsed", "_encoded")
"""What conat's subclass of nats-py's client adds: nats-py must not define these names itself."""


def _problem(member: Member) -> str | None:
    """What is wrong with ``member`` in the installed nats-py, or None."""
    owner = member.owner
    if member.params is None:
        value = getattr(owner(), member.name, _MISSING)
        if value is _MISSING:
            return "is gone"
        if member.kind is not None and not isinstance(value, member.kind):
            return f"is a {type(value).__name__}, not {member.kind}"
        return None
    fn = getattr(owner, member.name, None)
    if fn is None or not callable(fn):
        return "is gone"
    if member.coroutine != inspect.iscoroutinefunction(fn):
        return "is no longer a coroutine function" if member.coroutine else "became a coroutine function"
    params = list(inspect.signature(fn).parameters.values())[1:]
    names = tuple(p.name for p in params[: len(member.params)])
    if names != member.params:
        return f"takes ({', '.join(p.name for p in params)}), not ({', '.join(member.params)}, ...)"
    extra = [p.name for p in params[len(member.params) :] if p.default is inspect.Parameter.empty]
    if extra:
        return f"now requires {', '.join(extra)}"
    return None


_MISSING: Any = object()


@pytest.mark.parametrize("member", CONTRACT, ids=lambda m: f"{m.owner.__name__}.{m.name}")
def test_the_contract_holds(member: Member) -> None:
    problem = _problem(member)
    assert problem is None, (
        f"nats-py {VERSION}: {member.owner.__module__}.{member.owner.__name__}.{member.name} {problem}; "
        f"conat/_transport.py uses it to {member.why}. Adapt the transport to this nats-py (and this "
        "contract), or keep nats-py pinned below this version in pyproject.toml."
    )


def test_the_contract_lists_every_private_member_the_transport_uses() -> None:
    """A private member of nats-py's client used in the transport (through ``nc``, ``self._nc`` or
    ``super()``, or overridden in its subclass) must be in :data:`CONTRACT`."""
    tree = ast.parse(TRANSPORT.read_text(encoding="utf-8"))
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if (
                (isinstance(base, ast.Name) and base.id == "nc")
                or (isinstance(base, ast.Attribute) and base.attr == "_nc")
                or (
                    isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super"
                )
            ):
                used.add(node.attr)
        if isinstance(node, ast.ClassDef) and node.name == "_Connection":
            for item in node.body:
                if not isinstance(item, ast.AsyncFunctionDef | ast.FunctionDef):
                    continue
                if item.name.startswith("_") and not item.name.startswith("__"):
                    used.add(item.name)
    listed = {m.name for m in CONTRACT if m.owner is NatsClient}
    assert used, "the scan of conat/_transport.py found nothing: the scan itself is broken"
    assert used <= listed, f"conat/_transport.py uses nats-py's {sorted(used - listed)}: add them to CONTRACT"


def test_our_subclass_adds_nothing_nats_py_defines() -> None:
    clash = [name for name in OURS if hasattr(NatsClient, name) or hasattr(NatsClient(), name)]
    assert not clash, f"nats-py {VERSION} now defines {clash}, which conat's _Connection adds: rename ours"
    assert all(hasattr(_Connection(), name) for name in OURS), "OURS lists what _Connection adds: update it"


def test_connect_takes_the_options_the_transport_passes() -> None:
    params = inspect.signature(NatsClient.connect).parameters
    wanted = (
        "servers", "name", "inbox_prefix", "connect_timeout", "reconnect_time_wait", "max_reconnect_attempts",
        "ping_interval", "max_outstanding_pings", "allow_reconnect", "skip_subject_validation", "error_cb",
        "disconnected_cb", "reconnected_cb", "closed_cb", "token", "user", "password",
    )  # fmt: skip
    missing = [name for name in wanted if name not in params]
    assert not missing, f"nats-py {VERSION}: Client.connect() no longer takes {missing} (conat/_transport.py)"


async def test_a_connected_client_has_what_the_transport_reads(nats_server: conat.NatsServer) -> None:
    """The members that only exist, or only get their real type, once connected."""
    nc = await nats.connect(nats_server.url)
    try:
        assert isinstance(nc._flush_queue, asyncio.Queue), "Client._flush_queue: flush() kicks it"
        assert nc._max_pending_size > 0, "Client._max_pending_size: publish() bounds its buffering by it"
        assert callable(getattr(nc._transport, "close", None)), "Client._transport.close(): abandoned sockets"
        assert inspect.iscoroutinefunction(nc._transport.wait_closed), "Client._transport.wait_closed()"
        assert isinstance(nc._server_info.get("server_name"), str), "Client._server_info['server_name']"
        assert {"max_reconnect_attempts", "allow_reconnect"} <= set(nc.options), "Client.options keys"
        assert {"in_msgs", "in_bytes", "out_msgs", "out_bytes", "reconnects"} <= set(nc.stats), (
            "Client.stats keys"
        )
        token = nc._nuid.next()
        assert len(token) == 22 and bytes(token).isalnum(), "Client._nuid.next(): 22 characters"
    finally:
        await nc.close()


async def test_the_error_texts_conat_parses() -> None:
    """nats-py lowercases the server's -ERR text and hands a permissions violation to error_cb as
    ``Error("nats: <text>")``; the transport turns that into a :class:`PermissionViolation`."""
    texts: list[str] = []

    class Reader:
        async def _process_err(self, text: str) -> None:
            texts.append(text)

    parser = Parser(Reader())
    await parser.parse(b"-ERR 'Permissions Violation for Publish to \"Mixed.Case\"'\r\n")
    await parser.parse(b"-ERR 'User Authentication Expired'\r\n")
    assert texts == ["'permissions violation for publish to \"mixed.case\"'", "'user authentication expired'"]

    nc = NatsClient()
    reported: list[Exception] = []

    async def error_cb(e: Exception) -> None:
        reported.append(e)

    async def no_close(*args: object) -> None:
        pass

    nc._error_cb = error_cb
    nc._close = no_close  # type: ignore[method-assign]  # not connected: nothing to close
    await nc._process_err(texts[0])
    assert [str(e) for e in reported] == ['nats: permissions violation for publish to "mixed.case"']

    violations: list[PermissionViolation] = []

    class Events(TransportEvents):
        def on_permission_violation(self, violation: PermissionViolation) -> None:
            violations.append(violation)

    await Transport(Events())._on_error(reported[0])
    assert [(v.operation, v.subject_lower) for v in violations] == [("publish", "mixed.case")]

    await nc._process_err(texts[1])  # an expired user JWT: the transport's auth_expired reads it
    assert "authentication expired" in str(nc.last_error).lower()
    assert nats_client.AUTHORIZATION_VIOLATION == "authorization violation"
    assert _is_auth_refusal(nats_errors.AuthorizationError())
