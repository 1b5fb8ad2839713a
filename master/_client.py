"""Using master from a program: an API key file, a connection to master's bus, typed APIs, and
connections to the hosts' buses.

A program holds an **API key file** (:class:`ApiKeyFile`, JSON, mode 0600: master's URL, the
account id and the key; ``conat up`` writes the admin's). :func:`connect` opens master's bus with
it: the key is exchanged for short-lived tokens (:class:`ApiKeyCredentials`, see
:mod:`master._credentials`) that the client refreshes by itself. :class:`MasterApi` bundles the
typed proxies of the account API. :meth:`MasterApi.open_host` connects to the bus of the host
that runs a project, with tokens from ``tokens.connect`` (refreshed the same way), which is where
the project's file server, persist stores, bootlog and process are.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, Self

import msgspec

import conat
from conat.auth import read_private_file, write_private_file
from conat.platform import AccountsApi, HostsApi, ProjectsApi, TokensApi, check_id
from subjects import account_scope, inbox_prefix, master_account_api

__all__ = ["ApiKeyCredentials", "ApiKeyFile", "MasterApi", "connect"]

_EXCHANGE_TIMEOUT: Final = 10.0


class ApiKeyFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An API key and where to use it (a JSON file, mode 0600)."""

    master: str
    account_id: str
    api_key: str

    def __post_init__(self) -> None:
        check_id(self.account_id, "account_id")

    def __repr__(self) -> str:
        return f"ApiKeyFile(master={self.master!r}, account_id={self.account_id!r})"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read a key file (opened without following symlinks; refused if others may read it)."""
        raw = read_private_file(Path(path), what="API key file", max_size=64 * 1024)
        try:
            return msgspec.json.decode(raw, type=cls)
        except msgspec.ValidationError as e:
            raise conat.ConatError(f"{path}: not an API key file: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file atomically, mode 0600."""
        write_private_file(path, msgspec.json.encode(self) + b"\n")


class ApiKeyCredentials:
    """A :class:`conat` credential source: exchanges an API key for master-bus tokens.

    Each :meth:`fetch` opens a short connection to master's bus with the key as its credential
    (master's callout accepts API keys) and asks ``tokens.master`` for a token.
    """

    def __init__(self, url: str, account_id: str, api_key: str) -> None:
        self.url = url
        self.account_id = account_id
        self._key = api_key

    def __repr__(self) -> str:
        return f"ApiKeyCredentials({self.url!r}, account {self.account_id})"

    async def fetch(self) -> str:
        principal = account_scope(self.account_id)
        async with await conat.connect(
            self.url, token=self._key, inbox_prefix=inbox_prefix(principal), name="conat-api-key",
            connect_attempts=3,
        ) as client:  # fmt: skip
            tokens = client.service(TokensApi, master_account_api(self.account_id), timeout=_EXCHANGE_TIMEOUT)
            return await tokens.master()


async def connect(key: ApiKeyFile | str | os.PathLike[str], *, url: str | None = None) -> MasterApi:
    """Connect to master with an API key (a key file path, or a loaded :class:`ApiKeyFile`)."""
    keyfile = key if isinstance(key, ApiKeyFile) else ApiKeyFile.load(key)
    where = url or keyfile.master
    credentials = ApiKeyCredentials(where, keyfile.account_id, keyfile.api_key)
    client = await conat.connect(where, credentials=credentials, name="conat-master-client")
    return MasterApi(client, keyfile.account_id)


class MasterApi:
    """The account API on one connection: ``api.projects.create(...)``, ``api.hosts.list()``..."""

    def __init__(self, client: conat.Client, account_id: str, *, timeout: float = 120.0) -> None:
        self.client = client
        self.account_id = account_id
        subject = master_account_api(account_id)
        self.accounts: AccountsApi = client.service(AccountsApi, subject, timeout=timeout)
        self.projects: ProjectsApi = client.service(ProjectsApi, subject, timeout=timeout)
        self.hosts: HostsApi = client.service(HostsApi, subject, timeout=timeout)
        self.tokens: TokensApi = client.service(TokensApi, subject, timeout=timeout)

    async def open_host(self, host_id: str, projects: list[str] | None = None) -> conat.Client:
        """A connection to host ``host_id``'s bus, scoped to ``projects`` (default: all of the
        account's projects there); its tokens come from ``tokens.connect`` and are refreshed."""
        first = await self.tokens.connect(host_id, projects)
        tokens = self.tokens

        async def fresh() -> str:
            return (await tokens.connect(host_id, projects)).token

        return await conat.connect(first.url, credentials=_FirstThen(first.token, fresh),
                                   name="conat-host-client")  # fmt: skip

    async def open_project(self, project_id: str) -> conat.Client:
        """A connection to the bus of the host that runs ``project_id``, scoped to it."""
        project = await self.projects.get(project_id)
        if project.host_id is None:
            raise conat.ConatError(f"project {project_id} has no host yet")
        return await self.open_host(project.host_id, [project_id])

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _FirstThen:
    """The token already in hand first, then fresh ones."""

    def __init__(self, first: str, fresh: Callable[[], Awaitable[str]]) -> None:
        self._first: str | None = first
        self._fresh = fresh

    async def fetch(self) -> str:
        if self._first is not None:
            token, self._first = self._first, None
            return token
        return await self._fresh()
