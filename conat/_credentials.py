"""Client credentials: where tokens come from, what they grant, and keeping them fresh.

A conat token names its principal, its bus and its scope, so the client knows its own grant
without asking anybody: :func:`subjects.grant` of those gives the inbox prefix the server will
allow (``_INBOX.<principal>``) and the permissions the callout will sign, which the client then
checks locally (``Forbidden`` at once instead of a timeout).

Refresh: nats-py asks for the token synchronously at every (re)connect and does not reconnect
after a user-JWT expiry disconnect, so the session fetches a fresh token in the background a
margin before the current one expires, swaps it in and forces a reconnect; the server
re-authorizes, subscriptions are re-sent. If the server refuses us at reconnect (revoked, expired
key), the session fetches a fresh token and lets the reconnect retry; after ``max_refusals``
refusals in a row the client closes with :class:`Unauthorized` instead of retrying forever.

Refusals, and what the client can tell by itself. A bus never tells a client why it refused it:
nats-server answers every refusal with the same ``Authorization Violation`` and keeps the callout's
reason for its log and the bus's audit log. That is on purpose: the reason (revoked, unknown
signing key, rate-limited, a one-time token already used) is for the bus's operators, and an
unauthenticated peer has no channel to ask for it (an open lookup would tell anyone about anyone's
connections). So the client checks what it can know itself, *before* it sends the token, and says
so in :class:`Unauthorized` (``refusal`` is a stable code):

- ``too-large``/``malformed``: not a conat token a bus would accept;
- ``expired``/``not-yet-valid``: the token's own times against this machine's clock, with the same
  allowance for clock skew a bus has (:data:`conat.auth.TOKEN_LEEWAY`), so the client never refuses
  a token the bus would take;
- ``wrong-bus``: the server's INFO (sent before the client says anything) names the bus it serves
  (``conat-<bus>``, :func:`subjects.server_bus`); a token for another bus is not sent at all, so a
  bearer token for one bus never reaches another bus's server;
- otherwise ``refused``: the bus refused; the message says where the reason is (its audit log).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, final

from subjects import Grant, grant, server_bus

from ._backoff import Backoff
from ._clock import Clock, SystemClock
from ._errors import ConatError, Unauthorized
from .auth._files import read_private_file
from .auth._tokens import MAX_TOKEN_SIZE, TOKEN_LEEWAY, TOKEN_PREFIX, TokenClaims, peek_claims

if TYPE_CHECKING:
    from ._client import Client

__all__ = [
    "CredentialSession",
    "Credentials",
    "StaticToken",
    "TokenFile",
    "TokenProvider",
    "as_credentials",
    "token_problem",
]

log = logging.getLogger("conat.credentials")

MIN_MARGIN: Final = 2.0
MARGIN_SHARE: Final = 0.2
REFRESH_BACKOFF: Final = Backoff(initial=0.2, maximum=5.0)
"""Between the tries of a refresh whose source failed or still had the current token."""
MAX_TOKEN_FILE: Final = 1024 * 1024
"""A token file larger than this is not read at all (memory bound); the token in it must still be
at most :data:`conat.auth.MAX_TOKEN_SIZE` characters."""


class Credentials(Protocol):
    """A source of conat tokens."""

    async def fetch(self) -> str:
        """The freshest token this source has (raise :class:`ConatError` if it has none)."""
        ...


@final
class StaticToken:
    """One token for the client's whole life (it cannot be refreshed: the client closes at expiry)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def fetch(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "StaticToken(...)"


@final
class TokenFile:
    """A token kept in a file that something else renews; read again at every refresh.

    The file must be a regular file of this user, mode 0600 (no access for group or others), and
    is opened without following a symlink and checked on the descriptor that reads it
    (:func:`conat.auth.read_private_file`): nobody else can swap in their token or read ours.
    """

    def __init__(self, path: str | os.PathLike[str], *, what: str = "token file") -> None:
        self.path = Path(path)
        self._what = what

    async def fetch(self) -> str:
        """The token in the file. Raises :class:`conat.auth.SecretFileError` (a ConatError) naming
        the file and the problem (missing, a symlink, accessible by others, another user's...)."""
        raw = await asyncio.to_thread(read_private_file, self.path, what=self._what, max_size=MAX_TOKEN_FILE)
        return raw.decode("ascii", errors="replace").strip()

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"


@final
class TokenProvider:
    """Tokens from a coroutine function (e.g. exchanging an API key with master)."""

    def __init__(self, fetch: Callable[[], Awaitable[str]]) -> None:
        self._fetch = fetch

    async def fetch(self) -> str:
        return await self._fetch()

    def __repr__(self) -> str:
        return f"TokenProvider({self._fetch!r})"


def as_credentials(value: Credentials | str | os.PathLike[str] | Callable[[], Awaitable[str]]) -> Credentials:
    """A token, a token file path, a coroutine function, or a :class:`Credentials`.

    A string is a token if it starts with ``conat1.`` (every conat token does, and no token has a
    ``/``: a token never looks like a path); any other string is the path of a token file, and the
    file's errors say that the string was read as a path.
    """
    if isinstance(value, str):
        if value.startswith(f"{TOKEN_PREFIX}."):
            return StaticToken(value)
        return TokenFile(value, what=f"token file (credentials that are not a {TOKEN_PREFIX} token name a file)")
    if isinstance(value, os.PathLike):
        return TokenFile(value)
    if hasattr(value, "fetch"):
        return value
    if callable(value):
        return TokenProvider(value)
    raise TypeError(f"credentials must be a token, a token file path or a token provider, not {value!r}")


def _utc(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def token_problem(token: str, claims: TokenClaims | None, now: float) -> tuple[str, str] | None:
    """What the client can tell by itself about ``token`` at ``now``: ``(refusal code, why)``, or
    ``None`` if a bus (whose clock agrees with ours within :data:`~conat.auth.TOKEN_LEEWAY`) could
    accept it. ``claims`` are the token's unverified claims (None: they could not be read)."""
    if len(token) > MAX_TOKEN_SIZE:
        return "too-large", f"the token is {len(token)} characters; a bus accepts at most {MAX_TOKEN_SIZE}"
    if claims is None:
        return "malformed", "the credentials are not a conat token"
    if now >= claims.exp + TOKEN_LEEWAY:
        return (
            "expired",
            f"the token expired at {_utc(claims.exp)}, {now - claims.exp:.0f}s ago; get a fresh one",
        )
    if now + TOKEN_LEEWAY < claims.start:
        return (
            "not-yet-valid",
            f"the token is valid only from {_utc(claims.start)} (in {claims.start - now:.0f}s)",
        )
    return None


class CredentialSession:
    """The current token of one client, its grant, and the task that keeps it fresh.

    ``url`` names the bus in error messages; ``clock`` gives the time tokens are judged by (its
    ``wall()``) and the refresh waits on.
    """

    def __init__(
        self,
        source: Credentials,
        token: str,
        *,
        url: str = "the bus",
        max_refusals: int = 3,
        clock: Clock | None = None,
    ) -> None:
        self.source = source
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.url = url
        self.max_refusals = max_refusals
        self.refreshes = 0
        self.refusals = 0
        self.withheld_from: str | None = None
        """The bus of the last server the token was withheld from (it serves another bus)."""
        self._task: asyncio.Task[None] | None = None
        self._refetch: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self.install(token)

    @classmethod
    async def open(
        cls, source: Credentials, *, url: str = "the bus", max_refusals: int = 3, clock: Clock | None = None
    ) -> CredentialSession:
        """Fetch a first token from ``source``.

        Raises:
            Unauthorized: ``"too-large"`` or ``"malformed"``: no bus would accept it.
            ConatError: the source has no token (e.g. an unreadable token file).
        """
        return cls(source, await source.fetch(), url=url, max_refusals=max_refusals, clock=clock)

    def install(self, token: str) -> None:
        """Make ``token`` current (the next CONNECT sends it).

        Raises:
            Unauthorized: ``"too-large"`` or ``"malformed"`` (not a conat token, or one naming no
                valid grant); the current token stays.
        """
        if len(token) > MAX_TOKEN_SIZE:
            code, why = token_problem(token, None, 0.0) or ("too-large", "")
            raise Unauthorized(self.url, why, refusal=code)
        try:
            claims = peek_claims(token)
            access = grant(claims.sub, claims.scope, claims.aud)
        except (ConatError, ValueError) as e:
            raise Unauthorized(
                self.url, f"the credentials are not a usable conat token: {e}", refusal="malformed"
            ) from None
        self._token = token
        self.claims: TokenClaims = claims
        self.grant: Grant = access
        if self._client is not None:
            self._client.permissions = access.permissions

    def attach(self, client: Client) -> None:
        """Bind the session to ``client`` before it connects (permissions, the server's INFO)."""
        self._client = client

    def token(self) -> str:
        """The token for this CONNECT (nats-py calls this synchronously at every connect, after the
        server's INFO arrived): withheld (``""``, the server then refuses with no credentials)
        when the server names another bus than the token's."""
        client = self._client
        served = server_bus(client._core.transport.server_name or "") if client is not None else None
        if served is not None and served != self.claims.aud:
            self.withheld_from = served
            return ""
        self.withheld_from = None
        return self._token

    def problem(self, now: float | None = None) -> Unauthorized | None:
        """A refusal the client can tell by itself for the current token now, or None."""
        found = token_problem(self._token, self.claims, self.clock.wall() if now is None else now)
        if found is None:
            return None
        code, why = found
        return Unauthorized(self.url, why, refusal=code)

    def refusal(self) -> Unauthorized:
        """Why the bus refused us, as far as the client can tell (see the module docstring)."""
        if self.withheld_from is not None:
            return Unauthorized(
                self.url,
                f"the token is for bus {self.claims.aud!r} but the server serves bus {self.withheld_from!r}; "
                "the token was not sent",
                refusal="wrong-bus",
            )
        now = self.clock.wall()
        local = self.problem(now)
        if local is not None:
            return local
        if now >= self.claims.exp:
            return Unauthorized(
                self.url,
                f"the token expired at {_utc(self.claims.exp)}, {now - self.claims.exp:.0f}s ago; the bus allows "
                "for some clock skew but refused it: get a fresh one",
                refusal="expired",
            )
        return Unauthorized(
            self.url,
            f"the bus refused the token of {self.principal} for {self.claims.aud!r}; a bus does not tell "
            "clients why (revoked, unknown signing key, rate-limited, one-time token already used...): "
            "its audit log has the reason",
        )

    @property
    def principal(self) -> str:
        return self.claims.sub

    def start(self, client: Client) -> None:
        """Start keeping the token fresh (a connected client; sources other than a static token)."""
        self._client = client
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="conat-credentials")

    async def aclose(self) -> None:
        for task in (self._task, self._refetch):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _delay(self) -> float:
        lifetime = max(0.0, self.claims.exp - self.claims.iat)
        margin = max(MIN_MARGIN, MARGIN_SHARE * lifetime)
        return max(0.0, self.claims.exp - margin - self.clock.wall())

    async def _refresh_loop(self) -> None:
        clock = self.clock
        while True:
            await clock.sleep_until(clock.now() + self._delay())
            if not await self._fetch_new():
                continue
            self.refreshes += 1
            client = self._client
            if client is not None and client.is_connected:
                await client._core.transport.force_reconnect()

    async def _fetch_new(self) -> bool:
        """Fetch until the source gives a token different from the current one (or the current
        one expires: then False, and the server will close us at the JWT's expiry)."""
        clock = self.clock
        delays = REFRESH_BACKOFF.sequence()
        while True:
            try:
                token = await self.source.fetch()
                if token != self._token:
                    self.install(token)
                    return True
            except ConatError as e:
                log.warning("could not refresh the credentials: %s", e)
            if clock.wall() >= self.claims.exp:
                await clock.sleep_until(clock.now() + REFRESH_BACKOFF.maximum)
                return False
            await delays.sleep(clock)

    # -- refusals at reconnect -------------------------------------------------------------
    def refused(self) -> Unauthorized | None:
        """The server refused us at a reconnect: try a fresh token; past ``max_refusals`` in a row,
        the error the client must close with."""
        self.refusals += 1
        if self.refusals >= self.max_refusals:
            error = self.refusal()
            return Unauthorized(
                error.url, f"{error.reason} (refused {self.refusals} times in a row)", refusal=error.refusal
            )
        if self._refetch is None or self._refetch.done():
            self._refetch = asyncio.get_running_loop().create_task(self._refetch_once())
        return None

    async def _refetch_once(self) -> None:
        try:
            token = await self.source.fetch()
            if token != self._token:
                self.install(token)
        except ConatError as e:
            log.warning("could not fetch fresh credentials after a refusal: %s", e)

    def reconnected(self) -> None:
        self.refusals = 0

    def closed_by_server(self, auth_expired: bool) -> Unauthorized | None:
        """Why the server closed us for good, if it was about the credentials: nats-py does not
        reconnect after a user-JWT expiry, so an expired token (a static one, or a source that gave
        no fresh one in time) ends the client."""
        if not auth_expired:
            return None
        if self.clock.wall() < self.claims.exp - 1:  # - 1: the user JWT's expiry is in whole seconds
            why = (
                "the bus ended the connection at its lifetime cap, before the token's exp at "
                f"{_utc(self.claims.exp)} (the bus's max_lifetime is shorter than the token's lifetime)"
            )
        else:
            why = f"the token expired at {_utc(self.claims.exp)} and no fresh one replaced it in time"
            if isinstance(self.source, StaticToken):
                why += " (a static token cannot be refreshed: pass a token file or a token provider)"
        return Unauthorized(self.url, why, refusal="expired")
