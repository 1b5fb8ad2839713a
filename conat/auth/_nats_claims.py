"""The claims of the NATS auth callout: the server's request, the responder's reply, the user JWT.

Flow (config mode; nats-server ``authorization { auth_callout { issuer, account, auth_users, xkey } }``):

1. A client connects with a token or user/password. The server makes up a fresh user nkey
   (``"U…"``) and publishes an *authorization request* JWT on :data:`AUTH_CALLOUT_SUBJECT` in the
   callout account, signed by its server nkey (``iss`` = its id, ``"N…"``), ``aud`` =
   :data:`AUTHORIZATION_REQUEST_AUDIENCE`, ``exp`` = now + the auth timeout. With ``xkey`` set the
   payload is sealed (see :mod:`conat.auth._xkey`) and the ``Nats-Server-Xkey`` header names the
   server's curve key. :func:`parse_authorization_request` verifies the JWT into an
   :class:`AuthorizationRequest`.
2. The responder answers with an *authorization response* JWT (:func:`authorization_response`),
   signed by the callout issuer (an account key, ``"A…"``), ``sub`` = the user nkey, ``aud`` = the
   server id, carrying either a *user JWT* (:func:`user_jwt`) or an error string.
3. The server checks: the signatures, the issuer, ``sub`` equal to the user nkey it made, ``aud``
   equal to its id, and the time window; then applies the user JWT's permissions and expiry.

The user JWT's ``aud`` is the account the client lands in. Its permissions come straight from
:meth:`subjects.Permissions.to_nats`, which never emits a lone empty ``allow`` list (NATS reads
that as "everything"); :func:`user_jwt` requires both ``pub`` and ``sub`` for the same reason.

Request records ignore fields they do not know, so a newer server does not break parsing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from ._errors import JwtError, NkeyError
from ._jwt import DEFAULT_LEEWAY, encode_jwt, verify_jwt
from ._nkeys import KeyKind, KeyPair, check_public_key

__all__ = [
    "AUTHORIZATION_REQUEST_AUDIENCE",
    "AUTH_CALLOUT_SUBJECT",
    "XKEY_HEADER",
    "AuthorizationRequest",
    "ClientInfo",
    "ConnectOpts",
    "ServerId",
    "authorization_response",
    "parse_authorization_request",
    "user_jwt",
]

AUTH_CALLOUT_SUBJECT: Final = "$SYS.REQ.USER.AUTH"
"""Where nats-server publishes authorization requests (in the callout account)."""

AUTHORIZATION_REQUEST_AUDIENCE: Final = "nats-authorization-request"
"""The ``aud`` of every authorization request JWT."""

XKEY_HEADER: Final = "Nats-Server-Xkey"
"""Header of a sealed request: the server's curve public key, to open it and to seal the reply."""

_UNLIMITED: Final = -1


class ServerId(msgspec.Struct, frozen=True, kw_only=True):
    """The server that asks. ``id`` is its public nkey (``"N…"``): the reply's ``aud``."""

    name: str = ""
    host: str = ""
    id: str = ""
    version: str = ""
    cluster: str = ""
    tags: tuple[str, ...] = ()
    xkey: str = ""


class ClientInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The connecting client as the server sees it.

    ``id`` is the client id (``cid``, the handle for a later KICK); ``kind`` is ``"Client"`` or
    ``"Leafnode"``; ``type`` is ``"nats"``, ``"websocket"``, ``"mqtt"``... The user JWT's
    ``allowed_connection_types`` is not enforced on the callout path: check ``type`` here.
    """

    host: str = ""
    id: int = 0
    user: str = ""
    name: str = ""
    kind: str = ""
    type: str = ""


class ConnectOpts(msgspec.Struct, frozen=True, kw_only=True):
    """The client's CONNECT credentials and identity. ``auth_token`` and ``password`` are secrets:
    they are left out of ``repr``."""

    auth_token: str = ""
    user: str = ""
    password: str = msgspec.field(default="", name="pass")
    jwt: str = ""
    nkey: str = ""
    name: str = ""
    lang: str = ""
    version: str = ""
    protocol: int = 0

    def __repr__(self) -> str:
        token = "'***'" if self.auth_token else "''"
        password = "'***'" if self.password else "''"
        return (
            f"ConnectOpts(auth_token={token}, user={self.user!r}, password={password}, "
            f"name={self.name!r}, lang={self.lang!r}, version={self.version!r}, protocol={self.protocol})"
        )


class AuthorizationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The ``nats`` claim of a verified authorization request JWT.

    ``user_nkey`` is the key the server generated for this connection: the ``sub`` of the reply
    and of the user JWT.
    """

    user_nkey: str
    server_id: ServerId
    client_info: ClientInfo = msgspec.field(default_factory=ClientInfo)
    connect_opts: ConnectOpts = msgspec.field(default_factory=ConnectOpts)
    type: str = "authorization_request"
    version: int = 2


def parse_authorization_request(
    token: str, *, now: float | None = None, leeway: float = DEFAULT_LEEWAY
) -> AuthorizationRequest:
    """Verify an authorization request JWT (already opened, if it was sealed) and read it.

    Checks the signature, ``aud``, the time window, that the signer is a server nkey and is the
    ``server_id.id`` the request names, and that ``user_nkey`` is a user key.

    Raises:
        JwtError: a failed JWT check (see :func:`verify_jwt`), ``"wrong-issuer"`` if the signer is not
            the server the request names, or ``"bad-jwt"`` for a claim of the wrong shape.
    """
    claims = verify_jwt(token, audience=AUTHORIZATION_REQUEST_AUDIENCE, now=now, leeway=leeway)
    try:
        request = msgspec.convert(claims.get("nats"), AuthorizationRequest)
    except msgspec.ValidationError as exc:
        raise JwtError("bad-jwt", f"not an authorization request: {exc}") from None
    if request.type != "authorization_request":
        raise JwtError("bad-jwt", f"claim nats.type is {request.type!r}, not 'authorization_request'")
    if claims["iss"] != request.server_id.id:
        raise JwtError("wrong-issuer", f"signed by {claims['iss']!r}, not by server {request.server_id.id!r}")
    try:
        check_public_key(claims["iss"], KeyKind.SERVER, what="request issuer")
        check_public_key(request.user_nkey, KeyKind.USER, what="user_nkey")
    except NkeyError as exc:
        raise JwtError("bad-jwt", str(exc)) from None
    return request


def _permission_side(name: str, side: object) -> dict[str, list[str]]:
    if not isinstance(side, Mapping):
        raise TypeError(f"permissions.{name}: must be a mapping with 'allow' and/or 'deny', got {side!r}")
    unknown = set(side) - {"allow", "deny"}
    if unknown:
        raise ValueError(f"permissions.{name}: unknown keys {sorted(unknown)}")
    out: dict[str, list[str]] = {}
    for key in ("allow", "deny"):
        patterns = side.get(key, [])
        if isinstance(patterns, str) or not isinstance(patterns, Sequence):
            raise TypeError(f"permissions.{name}.{key}: must be a list of subjects, got {patterns!r}")
        if not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"permissions.{name}.{key}: every subject must be a non-empty str")
        if patterns:
            out[key] = list(patterns)
    return out


def user_jwt(
    *,
    user_nkey: str,
    account: str,
    name: str,
    permissions: Mapping[str, Mapping[str, Sequence[str]]],
    responses: tuple[int, float] | None,
    expires: float,
    issuer: KeyPair,
    now: float | None = None,
) -> str:
    """Build and sign the user JWT that places a client in ``account`` with ``permissions``.

    Args:
        user_nkey: the request's ``user_nkey`` (``"U…"``); the server refuses any other.
        account: the account the client lands in (config mode: its name, e.g. ``"APP"``).
        name: shown instead of the user name in server logs and events; ``""`` for none.
        permissions: ``{"pub": {"allow": [...], "deny": [...]}, "sub": {...}}``, as
            :meth:`subjects.Permissions.to_nats` returns. Both sides are required: a missing side
            would leave it unrestricted.
        responses: ``(max, ttl_seconds)`` lets the client publish up to ``max`` replies to each
            request it received, for ``ttl`` seconds, without publish rights on the reply subject
            (NATS: ``max`` 0 means 1, ``ttl`` 0 means 2 minutes). ``None``: no such grant.
        expires: when the server disconnects the client (Unix seconds, truncated to whole seconds).
            Refresh (reconnect) before then: nats-py does not reconnect after this expiry.
        issuer: the callout issuer, an account key pair.
        now: the issue time; default the system clock.

    Raises:
        ValueError: a malformed argument (the message names it).
        NkeyError: ``user_nkey`` is not a user key, or ``issuer`` is not an account key.
    """
    check_public_key(user_nkey, KeyKind.USER, what="user_nkey")
    _check_issuer(issuer)
    if not isinstance(account, str) or not account:
        raise ValueError(f"account: must be a non-empty str, got {account!r}")
    if not isinstance(name, str):
        raise TypeError(f"name: must be a str, got {name!r}")
    if not isinstance(expires, int | float) or isinstance(expires, bool) or not math.isfinite(expires):
        raise ValueError(f"expires: must be a finite number of Unix seconds, got {expires!r}")
    if int(expires) <= 0:
        raise ValueError(f"expires: must be after the epoch, got {expires!r}")
    if not isinstance(permissions, Mapping) or set(permissions) != {"pub", "sub"}:
        raise ValueError("permissions: must have exactly the keys 'pub' and 'sub'")
    nats: dict[str, Any] = {
        "pub": _permission_side("pub", permissions["pub"]),
        "sub": _permission_side("sub", permissions["sub"]),
    }
    if responses is not None:
        max_responses, ttl = responses
        if isinstance(max_responses, bool) or not isinstance(max_responses, int) or max_responses < 0:
            raise ValueError(f"responses: max must be an int >= 0, got {max_responses!r}")
        if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not (math.isfinite(ttl) and ttl >= 0):
            raise ValueError(f"responses: ttl must be a number of seconds >= 0, got {ttl!r}")
        nats["resp"] = {"max": max_responses, "ttl": round(ttl * 1_000_000_000)}
    nats.update(subs=_UNLIMITED, data=_UNLIMITED, payload=_UNLIMITED, type="user", version=2)
    claims: dict[str, Any] = {"sub": user_nkey, "aud": account, "exp": int(expires)}
    if name:
        claims["name"] = name
    claims["nats"] = nats
    return encode_jwt(claims, issuer, now=now)


def authorization_response(
    *,
    user_nkey: str,
    server_id: str,
    issuer: KeyPair,
    jwt: str | None = None,
    error: str | None = None,
    now: float | None = None,
) -> str:
    """Build and sign the callout's answer: a user JWT to admit the client, or an error to refuse.

    Args:
        user_nkey: the request's ``user_nkey`` (the reply's ``sub``).
        server_id: the request's ``server_id.id`` (the reply's ``aud``); the server refuses a reply
            meant for another server.
        issuer: the callout issuer (``auth_callout.issuer``), an account key pair.
        jwt: the user JWT (see :func:`user_jwt`) to admit the client.
        error: a reason to refuse it. It reaches the server log only; the client just sees
            "Authorization Violation".
        now: the issue time; default the system clock.

    Raises:
        ValueError: not exactly one of ``jwt`` and ``error``, or an empty one.
        NkeyError: a key of the wrong kind.
    """
    if (jwt is None) == (error is None):
        raise ValueError("jwt, error: pass exactly one of them")
    if jwt is not None and (not isinstance(jwt, str) or not jwt):
        raise ValueError("jwt: must be a non-empty str")
    if error is not None and (not isinstance(error, str) or not error):
        raise ValueError("error: must be a non-empty str (an empty error reads as success)")
    check_public_key(user_nkey, KeyKind.USER, what="user_nkey")
    check_public_key(server_id, KeyKind.SERVER, what="server_id")
    _check_issuer(issuer)
    nats: dict[str, Any] = {"jwt": jwt} if jwt is not None else {"error": error}
    nats.update(type="authorization_response", version=2)
    return encode_jwt({"sub": user_nkey, "aud": server_id, "nats": nats}, issuer, now=now)


def _check_issuer(issuer: KeyPair) -> None:
    if not isinstance(issuer, KeyPair):
        raise TypeError(f"issuer: must be a KeyPair, got {type(issuer).__name__}")
    if issuer.kind is not KeyKind.ACCOUNT:
        raise NkeyError("bad-prefix", "issuer", f"expected an account key pair, got kind {issuer.kind}")
