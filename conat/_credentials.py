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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, final

from subjects import Grant, grant

from ._errors import ConatError, Unauthorized
from .auth._tokens import TokenClaims, peek_claims

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["CredentialSession", "Credentials", "StaticToken", "TokenFile", "TokenProvider", "as_credentials"]

log = logging.getLogger("conat.credentials")

MIN_MARGIN: Final = 2.0
MARGIN_SHARE: Final = 0.2
RETRY_MIN: Final = 0.2
RETRY_MAX: Final = 5.0


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
    """A token kept in a file (0600) that something else renews; read again at every refresh."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def fetch(self) -> str:
        def read() -> str:
            mode = self.path.stat().st_mode
            if mode & 0o077:
                raise ConatError(
                    f"token file {self.path} is readable by others (mode {mode & 0o777:o}); make it 0600"
                )
            return self.path.read_text().strip()

        try:
            return await asyncio.to_thread(read)
        except OSError as e:
            raise ConatError(f"cannot read token file {self.path}: {e.strerror}") from None

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
    """A token string, a token file path, a coroutine function, or a :class:`Credentials`."""
    if isinstance(value, str):
        return StaticToken(value)
    if isinstance(value, os.PathLike):
        return TokenFile(value)
    if hasattr(value, "fetch"):
        return value
    if callable(value):
        return TokenProvider(value)
    raise TypeError(f"credentials must be a token, a token file path or a token provider, not {value!r}")


class CredentialSession:
    """The current token of one client, its grant, and the task that keeps it fresh."""

    def __init__(self, source: Credentials, token: str, *, max_refusals: int = 3) -> None:
        self.source = source
        self.max_refusals = max_refusals
        self.refreshes = 0
        self.refusals = 0
        self._task: asyncio.Task[None] | None = None
        self._refetch: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self.install(token)

    @classmethod
    async def open(cls, source: Credentials, *, max_refusals: int = 3) -> CredentialSession:
        return cls(source, await source.fetch(), max_refusals=max_refusals)

    def install(self, token: str) -> None:
        """Make ``token`` current (the next CONNECT sends it); raises if it names no valid grant."""
        try:
            claims = peek_claims(token)
            access = grant(claims.sub, claims.scope, claims.aud)
        except (ConatError, ValueError) as e:
            raise ConatError(f"the credentials are not a usable conat token: {e}") from None
        self._token = token
        self.claims: TokenClaims = claims
        self.grant: Grant = access
        if self._client is not None:
            self._client.permissions = access.permissions

    def token(self) -> str:
        """The current token (nats-py calls this synchronously at every connect)."""
        return self._token

    @property
    def principal(self) -> str:
        return self.claims.sub

    def start(self, client: Client) -> None:
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
        return max(0.0, self.claims.exp - margin - time.time())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._delay())
            if not await self._fetch_new():
                continue
            self.refreshes += 1
            client = self._client
            if client is not None and client.is_connected:
                await client._transport.force_reconnect()

    async def _fetch_new(self) -> bool:
        """Fetch until the source gives a token different from the current one (or the current
        one expires: then False, and the server will close us at the JWT's expiry)."""
        delay = RETRY_MIN
        while True:
            try:
                token = await self.source.fetch()
                if token != self._token:
                    self.install(token)
                    return True
            except ConatError as e:
                log.warning("could not refresh the credentials: %s", e)
            if time.time() >= self.claims.exp:
                await asyncio.sleep(RETRY_MAX)
                return False
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)

    # -- refusals at reconnect -------------------------------------------------------------
    def refused(self) -> Unauthorized | None:
        """The server refused us at a reconnect: try a fresh token; past ``max_refusals`` in a row,
        the error the client must close with."""
        self.refusals += 1
        if self.refusals >= self.max_refusals:
            return Unauthorized(
                "the bus", f"credentials of {self.principal} refused {self.refusals} times in a row"
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
