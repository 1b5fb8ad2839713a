"""Auth callout claims: request parsing and the response/user-JWT builders (conat.auth._nats_claims)."""

from __future__ import annotations

from typing import Any

import pytest

from conat.auth import (
    AUTHORIZATION_REQUEST_AUDIENCE,
    AuthorizationRequest,
    ConnectOpts,
    JwtError,
    KeyKind,
    KeyPair,
    NkeyError,
    authorization_response,
    decode_jwt,
    encode_jwt,
    parse_authorization_request,
    user_jwt,
    verify_jwt,
)
from subjects import Permissions

# nats-io/nats-server server/auth_callout_test.go: the callout issuer account and a user key.
ISSUER = KeyPair.from_seed("SAANDLKMXL6CUS3CP52WIXBEDN6YJ545GDKC65U5JZPPV6WH6ESWUA6YAI")
USER_NKEY = "UBO2MQV67TQTVIRV3XFTEZOACM4WLOCMCDMAWN5QVN5PI2N6JHTVDRON"
SERVER = KeyPair.create(KeyKind.SERVER)
NOW = 1_700_000_000.0


def request_claims(**nats: Any) -> dict[str, Any]:
    """An authorization request shaped like nats-server's (with fields we do not model)."""
    body: dict[str, Any] = {
        "server_id": {
            "name": "n1",
            "host": "127.0.0.1",
            "id": SERVER.public_key,
            "version": "2.15.1",
            "xkey": "",
            "future_field": {"x": 1},
        },
        "user_nkey": USER_NKEY,
        "client_info": {
            "host": "127.0.0.1",
            "id": 7,
            "user": "alice",
            "kind": "Client",
            "type": "nats",
            "mqtt_id": "",
        },
        "connect_opts": {
            "auth_token": "s3cr3t-token",
            "pass": "s3cr3t-pw",
            "user": "alice",
            "lang": "python3",
            "protocol": 1,
        },
        "type": "authorization_request",
        "version": 2,
        "request_nonce": "abc",
    }
    body.update(nats)
    return {
        "aud": AUTHORIZATION_REQUEST_AUDIENCE,
        "sub": SERVER.public_key,
        "exp": int(NOW) + 2,
        "nats": body,
    }


def test_parse_authorization_request() -> None:
    request = parse_authorization_request(encode_jwt(request_claims(), SERVER, now=NOW), now=NOW)
    assert isinstance(request, AuthorizationRequest)
    assert request.user_nkey == USER_NKEY
    assert request.server_id.id == SERVER.public_key and request.server_id.version == "2.15.1"
    assert request.client_info.id == 7 and request.client_info.type == "nats"
    assert request.connect_opts.auth_token == "s3cr3t-token" and request.connect_opts.password == "s3cr3t-pw"
    assert "s3cr3t" not in repr(request.connect_opts) and "s3cr3t" not in repr(request)


def test_request_defaults_for_missing_sections() -> None:
    claims = request_claims()
    del claims["nats"]["client_info"], claims["nats"]["connect_opts"]
    request = parse_authorization_request(encode_jwt(claims, SERVER, now=NOW), now=NOW)
    assert request.connect_opts == ConnectOpts()


def test_request_must_come_from_the_server_it_names() -> None:
    impostor = KeyPair.create(KeyKind.SERVER)
    with pytest.raises(JwtError) as e:
        parse_authorization_request(encode_jwt(request_claims(), impostor, now=NOW), now=NOW)
    assert e.value.code == "wrong-issuer"


def test_request_signer_must_be_a_server_key() -> None:
    account = KeyPair.create(KeyKind.ACCOUNT)
    claims = request_claims()
    claims["nats"]["server_id"]["id"] = account.public_key
    with pytest.raises(JwtError) as e:
        parse_authorization_request(encode_jwt(claims, account, now=NOW), now=NOW)
    assert e.value.code == "bad-jwt"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"aud": "someone-else"}, "wrong-audience"),
        ({"exp": int(NOW) - 60}, "expired"),
        ({"nats": {"user_nkey": USER_NKEY}}, "bad-jwt"),  # no server_id
        ({"nats": "nope"}, "bad-jwt"),
    ],
)
def test_bad_requests(change: dict[str, Any], code: str) -> None:
    claims = request_claims()
    claims.update(change)
    with pytest.raises(JwtError) as e:
        parse_authorization_request(encode_jwt(claims, SERVER, now=NOW), now=NOW)
    assert e.value.code == code


def test_request_type_and_user_key_are_checked() -> None:
    for nats in ({"type": "authorization_response"}, {"user_nkey": ISSUER.public_key}):
        with pytest.raises(JwtError) as e:
            parse_authorization_request(encode_jwt(request_claims(**nats), SERVER, now=NOW), now=NOW)
        assert e.value.code == "bad-jwt"


GRANT = Permissions(
    publish_allow=("app.orders.>",), publish_deny=(), subscribe_allow=("app.events.>",), subscribe_deny=()
)


def test_user_jwt_shape() -> None:
    token = user_jwt(
        user_nkey=USER_NKEY,
        account="APP",
        name="alice",
        permissions=GRANT.to_nats(),
        responses=(1, 2.5),
        expires=NOW + 3600.9,
        issuer=ISSUER,
        now=NOW,
    )
    claims = verify_jwt(token, issuer=ISSUER.public_key, audience="APP", now=NOW)
    assert claims["sub"] == USER_NKEY and claims["name"] == "alice"
    assert claims["exp"] == int(NOW) + 3600  # truncated, never later than asked
    assert claims["nats"] == {
        "pub": {"allow": ["app.orders.>"]},
        "sub": {"allow": ["app.events.>"]},
        "resp": {"max": 1, "ttl": 2_500_000_000},
        "subs": -1,
        "data": -1,
        "payload": -1,
        "type": "user",
        "version": 2,
    }


def test_user_jwt_deny_all_and_no_responses() -> None:
    nothing = Permissions(publish_allow=(), publish_deny=(), subscribe_allow=(), subscribe_deny=())
    token = user_jwt(
        user_nkey=USER_NKEY,
        account="APP",
        name="",
        permissions=nothing.to_nats(),
        responses=None,
        expires=NOW + 60,
        issuer=ISSUER,
        now=NOW,
    )
    claims = decode_jwt(token)[1]
    assert "name" not in claims and "resp" not in claims["nats"]
    assert claims["nats"]["pub"] == {"deny": [">"]} and claims["nats"]["sub"] == {"deny": [">"]}


def _user_jwt(**change: Any) -> str:
    kwargs: dict[str, Any] = {
        "user_nkey": USER_NKEY,
        "account": "APP",
        "name": "alice",
        "permissions": GRANT.to_nats(),
        "responses": None,
        "expires": NOW + 60,
        "issuer": ISSUER,
    }
    kwargs.update(change)
    return user_jwt(**kwargs)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"permissions": {"pub": {"allow": ["a"]}}}, "permissions"),  # sub missing: would be unrestricted
        ({"permissions": {"pub": {"allow": "a"}, "sub": {}}}, "permissions.pub.allow"),
        ({"permissions": {"pub": {"permit": ["a"]}, "sub": {}}}, "permissions.pub"),
        ({"permissions": {"pub": {"allow": [""]}, "sub": {}}}, "permissions.pub.allow"),
        ({"account": ""}, "account"),
        ({"expires": float("nan")}, "expires"),
        ({"expires": 0.5}, "expires"),
        ({"responses": (-1, 1.0)}, "responses"),
        ({"responses": (1, -1.0)}, "responses"),
    ],
)
def test_user_jwt_argument_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises((ValueError, TypeError), match=field):
        _user_jwt(**change)


def test_user_jwt_key_kinds() -> None:
    with pytest.raises(NkeyError) as e:
        _user_jwt(user_nkey=ISSUER.public_key)
    assert e.value.code == "bad-prefix"
    with pytest.raises(NkeyError) as e:
        _user_jwt(issuer=KeyPair.create(KeyKind.OPERATOR))
    assert e.value.code == "bad-prefix"


def test_authorization_response_shapes() -> None:
    ok = authorization_response(
        user_nkey=USER_NKEY, server_id=SERVER.public_key, issuer=ISSUER, jwt="a.b.c", now=NOW
    )
    claims = verify_jwt(ok, issuer=ISSUER.public_key, audience=SERVER.public_key, now=NOW)
    assert claims["sub"] == USER_NKEY
    assert claims["nats"] == {"jwt": "a.b.c", "type": "authorization_response", "version": 2}
    refused = authorization_response(
        user_nkey=USER_NKEY, server_id=SERVER.public_key, issuer=ISSUER, error="bad token", now=NOW
    )
    assert decode_jwt(refused)[1]["nats"] == {
        "error": "bad token",
        "type": "authorization_response",
        "version": 2,
    }


@pytest.mark.parametrize(
    "change",
    [{}, {"jwt": "a", "error": "b"}, {"jwt": ""}, {"error": ""}],
)
def test_authorization_response_needs_exactly_one_outcome(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"jwt|error"):
        authorization_response(user_nkey=USER_NKEY, server_id=SERVER.public_key, issuer=ISSUER, **change)


def test_authorization_response_key_kinds() -> None:
    with pytest.raises(NkeyError) as e:
        authorization_response(user_nkey=USER_NKEY, server_id=ISSUER.public_key, issuer=ISSUER, error="x")
    assert e.value.code == "bad-prefix"
