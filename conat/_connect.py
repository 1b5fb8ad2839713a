"""``connect()``: from a URL (or none) and credentials to a connected :class:`Client`."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Final

from subjects import Permissions

from ._client import Client
from ._credentials import Credentials, CredentialSession, StaticToken, as_credentials
from ._errors import BadURL, ConnectError, Unauthorized
from ._paths import read_state
from ._transport import check_url

__all__ = ["connect", "resolve_urls"]

_MIB: Final = 1024 * 1024


def resolve_urls(url: str | list[str] | None) -> list[str]:
    """The server URLs to use: the argument, else ``$CONAT_URL``, else the local ``conat up`` server."""
    if url is None:
        url = os.environ.get("CONAT_URL") or None
    if url is None:
        state = read_state()
        if state is None:
            raise ConnectError(
                "(no URL)",
                "no server URL given, $CONAT_URL is unset and no local server is running "
                "(start one with `conat up` or `conat server`)",
            )
        url = state.url
    urls = [u.strip() for u in url.split(",")] if isinstance(url, str) else list(url)
    urls = [u for u in urls if u]
    if not urls:
        raise BadURL(repr(url), "expected a non-empty URL string")
    return [check_url(u) for u in urls]


async def connect(
    url: str | list[str] | None = None,
    *,
    name: str | None = None,
    token: str | Callable[[], str] | None = None,
    user: str | None = None,
    password: str | None = None,
    credentials: Credentials | str | os.PathLike[str] | Callable[[], Awaitable[str]] | None = None,
    inbox_prefix: str = "_INBOX",
    permissions: Permissions | None = None,
    connect_timeout: float = 2.0,
    connect_attempts: int = 3,
    reconnect_time_wait: float = 0.5,
    ping_interval: float = 4.0,
    max_outstanding_pings: int = 2,
    max_reassembly_bytes: int = 256 * _MIB,
    max_outgoing_bytes: int = 512 * _MIB,
    transfer_timeout: float = 60.0,
) -> Client:
    """Connect to the bus and return a :class:`Client` (also an async context manager).

    With no ``url``: ``$CONAT_URL``, else the server that ``conat up`` / ``conat server`` started
    (found through the state file in the data dir). A comma-separated string or a list names
    several servers of a cluster. The first connect tries ``connect_attempts`` times and raises
    :class:`ConnectError` (or :class:`BadURL`); once connected the client reconnects forever and
    notices a dead link within about ``ping_interval * (max_outstanding_pings + 1)`` seconds.

    ``credentials`` (a conat token, a token file path, a coroutine function returning tokens, or a
    :class:`Credentials`) authenticate to a bus with the auth callout: the client then uses the
    inbox prefix and checks the permissions its token grants, refreshes the token before it
    expires, and closes with :class:`Unauthorized` (``client.close_reason``) if the bus refuses it
    repeatedly or the token expires unreplaced.

    A refused first connect raises :class:`Unauthorized` (code 401) whose ``refusal`` says why:
    what the client can tell by itself is checked before the token is sent (``too-large``,
    ``malformed``, ``expired``, ``not-yet-valid``, ``wrong-bus``: the server's INFO names another
    bus, and the token is then withheld); ``no-credentials`` when none were given to a bus that
    needs them; otherwise ``refused`` (the bus keeps its reason for its audit log).
    """
    urls = resolve_urls(url)
    where = ", ".join(urls)
    session: CredentialSession | None = None
    if credentials is not None:
        if token is not None:
            raise TypeError("connect() takes credentials or token, not both")
        session = await CredentialSession.open(as_credentials(credentials), url=where)
        problem = session.problem()
        if problem is not None:
            raise problem
        inbox_prefix = session.grant.inbox_prefix
        permissions = session.grant.permissions
        token = session.token
    client = Client(
        name=name,
        inbox_prefix=inbox_prefix,
        permissions=permissions,
        max_reassembly_bytes=max_reassembly_bytes,
        max_outgoing_bytes=max_outgoing_bytes,
        transfer_timeout=transfer_timeout,
    )
    if session is not None:
        session.attach(client)
    try:
        await client._connect(
            urls,
            session,
            token=token,
            user=user,
            password=password,
            connect_timeout=connect_timeout,
            connect_attempts=connect_attempts,
            reconnect_time_wait=reconnect_time_wait,
            ping_interval=ping_interval,
            max_outstanding_pings=max_outstanding_pings,
        )
    except BaseException as e:
        if isinstance(e, Unauthorized):
            if session is not None:
                raise session.refusal() from None
            if token is None and user is None and password is None:
                raise Unauthorized(
                    where,
                    "this bus requires credentials: connect(credentials=<token, token file or provider>)",
                    refusal="no-credentials",
                ) from None
            raise Unauthorized(
                where,
                "the server refused the credentials (authorization violation); it does not tell clients why",
            ) from None
        raise
    if session is not None and not isinstance(session.source, StaticToken):
        session.start(client)
    return client
