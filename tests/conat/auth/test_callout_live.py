"""The auth modules against a real nats-server auth callout, with and without xkey.

A minimal responder (a plain nats-py subscription as the ``auth`` user) opens and verifies the
server's request with :func:`parse_authorization_request` (and :class:`CurveKeyPair` under xkey),
and answers with :func:`authorization_response` carrying a :func:`user_jwt`. The server verifies
our signatures, ``aud``/``sub`` binding and issuer, and enforces the permissions we granted: that is
the interoperability proof. One server per configuration (a module-scoped, parametrized fixture).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from conat._server import NatsServer
from conat._server_config import ServerConfig
from conat.auth import (
    AUTH_CALLOUT_SUBJECT,
    XKEY_HEADER,
    AuthorizationRequest,
    CurveKeyPair,
    KeyPair,
    authorization_response,
    parse_authorization_request,
    user_jwt,
)
from subjects import Permissions

pytestmark = pytest.mark.anyio

# nats-io/nats-server server/auth_callout_test.go: authCalloutIssuerSeed and curveSeed.
ISSUER = KeyPair.from_seed("SAANDLKMXL6CUS3CP52WIXBEDN6YJ545GDKC65U5JZPPV6WH6ESWUA6YAI")
XKEY = CurveKeyPair.from_seed("SXAAXMRAEP6JWWHNB6IKFL554IE6LZVT6EY5MBRICPILTLOPHAG73I3YX4")

GOOD_TOKEN = "let-me-in"
GRANT = Permissions(
    publish_allow=("app.orders.>",), publish_deny=(), subscribe_allow=("app.orders.>",), subscribe_deny=()
)


async def _ignore(exc: Exception) -> None:
    pass


@dataclass
class Callout:
    server: NatsServer
    xkey: bool


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "xkey"])
def callout(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callout]:
    auth_callout: dict[str, Any] = {
        "issuer": ISSUER.public_key,
        "account": "AUTH",
        "auth_users": ["auth", "sys"],
    }
    if request.param:
        auth_callout["xkey"] = XKEY.public_key
    extra = {
        "accounts": {
            "AUTH": {"users": [{"user": "auth", "password": "authpw"}]},
            "APP": {},
            "SYS": {"users": [{"user": "sys", "password": "syspw"}]},
        },
        "system_account": "SYS",
        "authorization": {"timeout": 2, "auth_callout": auth_callout},
    }
    server = NatsServer(ServerConfig(extra_blocks=extra), directory=tmp_path_factory.mktemp("callout"))
    server.start_sync()
    try:
        yield Callout(server, request.param)
    finally:
        server.stop_sync()


@dataclass
class Responder:
    requests: list[AuthorizationRequest] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


@pytest.fixture
async def responder(callout: Callout) -> AsyncIterator[Responder]:
    state = Responder()

    async def handle(msg: Any) -> None:
        try:
            state.raw.append(msg.data)
            server_xkey = (msg.headers or {}).get(XKEY_HEADER)
            data = XKEY.open(msg.data, server_xkey) if callout.xkey else msg.data
            request = parse_authorization_request(data.decode("ascii"))
            state.requests.append(request)
            common = {"user_nkey": request.user_nkey, "server_id": request.server_id.id, "issuer": ISSUER}
            if request.connect_opts.auth_token == GOOD_TOKEN:
                jwt = user_jwt(
                    user_nkey=request.user_nkey,
                    account="APP",
                    name="alice",
                    permissions=GRANT.to_nats(),
                    responses=None,
                    expires=time.time() + 60,
                    issuer=ISSUER,
                )
                answer = authorization_response(**common, jwt=jwt)
            else:
                answer = authorization_response(**common, error="unknown token")
            payload = answer.encode("ascii")
            if callout.xkey:
                assert server_xkey == request.server_id.xkey
                payload = XKEY.seal(payload, server_xkey)
            await msg.respond(payload)
        except Exception as exc:  # noqa: BLE001 - surfaced by the test, not swallowed by nats-py
            state.errors.append(exc)

    nc = await nats.connect(callout.server.url, user="auth", password="authpw", allow_reconnect=False)
    try:
        await nc.subscribe(AUTH_CALLOUT_SUBJECT, cb=handle)
        await nc.flush()
        yield state
    finally:
        await nc.close()
    assert state.errors == []


async def test_good_token_connects_and_publishes_where_allowed(
    callout: Callout, responder: Responder
) -> None:
    violations: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        violations.append(exc)

    nc = await nats.connect(callout.server.url, token=GOOD_TOKEN, allow_reconnect=False, error_cb=on_error)
    try:
        sub = await nc.subscribe("app.orders.>")
        await nc.publish("app.orders.1", b"one")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"one"
        await nc.publish("app.secret.1", b"nope")  # outside the grant: the server refuses it
        with anyio.fail_after(5):
            while not violations:
                await nc.flush()
                await anyio.sleep(0.01)
        assert "permissions violation" in str(violations[0]).lower()
        assert nc._server_info.get("server_id") == responder.requests[-1].server_id.id
    finally:
        await nc.close()
    request = responder.requests[-1]
    assert request.client_info.type == "nats" and request.client_info.kind == "Client"
    assert request.connect_opts.lang.startswith("python")
    assert bool(request.server_id.xkey) is callout.xkey
    assert responder.raw[-1].startswith(b"xkv1" if callout.xkey else b"eyJ")


async def test_bad_token_is_refused(callout: Callout, responder: Responder) -> None:
    nc = NATS()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        try:
            await nc.connect(callout.server.url, token="wrong", allow_reconnect=False, error_cb=_ignore)
        finally:
            await nc.close()  # nats-py leaves the refused socket open otherwise (a ResourceWarning later)
    assert responder.requests[-1].connect_opts.auth_token == "wrong"
    with anyio.fail_after(5):  # our error string reached the server (it is logged, never sent to the client)
        while "unknown token" not in callout.server.log_path.read_text(errors="replace"):
            await anyio.sleep(0.02)
