"""master's account and host APIs on its real bus: accounts and API keys, revocation, join tokens,
host liveness, placement refusals, bad arguments, and what a host's credentials cannot do.

The "hosts" here register and send keepalives by hand with their own credentials (no host server):
what the API does before it ever asks a host's runner.
"""

from __future__ import annotations

import time
import uuid

import pytest

import conat
from conat.platform import HostTokens, Keepalive, MasterHostApi, RegisterRequest, UnknownProject
from master import ApiKeyFile, HostOffline, MasterLocked, MasterServer, connect
from master._client import ApiKeyCredentials
from subjects import host_scope, inbox_prefix, master_account_api, master_host_api, runner_host

from .conftest import Platform, master_config, until

pytestmark = pytest.mark.anyio


async def _code(call: object) -> object:
    try:
        await call  # type: ignore[misc]
    except conat.RemoteError as e:
        return e.code
    raise AssertionError("the call was not refused")


async def test_accounts_and_api_keys(platform: Platform) -> None:
    ada = await platform.account("ada")
    try:
        me = await ada.accounts.whoami()
        assert (me.name, me.admin) == ("ada", False)
        assert await _code(ada.accounts.create("eve")) == 403  # only admins make accounts
        second = await ada.accounts.create_api_key("laptop")
        assert {k.name for k in await ada.accounts.list_api_keys()} == {"first key", "laptop"}
        key = ApiKeyFile(master=platform.url, account_id=me.account_id, api_key=second.api_key)
        async with await connect(key) as laptop:
            assert (await laptop.accounts.whoami()).account_id == me.account_id
        with pytest.raises(conat.Unauthorized):  # a key that is not one of master's
            await conat.connect(platform.url, token="ck_0123456789abcdef_" + "A" * 43, connect_attempts=1,
                                inbox_prefix=inbox_prefix(f"account-{me.account_id}"))  # fmt: skip
        assert await _code(ada.accounts.delete_api_key("0" * 16)) == "unknown-api-key"
    finally:
        await ada.aclose()


async def test_deleting_a_key_cuts_its_connections_at_once(platform: Platform) -> None:
    """The key's tokens are revoked on the bus: a connected client is kicked within 2 s and its
    key is refused; a program holding another key of the account reconnects by itself."""
    ada = await platform.account("ada2")
    me = await ada.accounts.whoami()
    doomed = await ada.accounts.create_api_key("doomed")
    credentials = ApiKeyCredentials(platform.url, me.account_id, doomed.api_key)
    client = await conat.connect(platform.url, credentials=credentials)
    try:
        api = master_account_api(me.account_id)
        assert (await client.request(api, conat.RpcRequest("accounts.whoami"), timeout=10)).data[
            "name"
        ] == "ada2"
        before = (client.statistics().reconnects, ada.client.statistics().reconnects)
        started = time.monotonic()
        await ada.accounts.delete_api_key(doomed.key_id)  # answered although it cuts ada's connections
        await until(lambda: client.state is not conat.ClientState.CONNECTED, timeout=2, step=0.01)
        assert time.monotonic() - started < 2.0  # kicked
        await until(lambda: client.state is conat.ClientState.CLOSED, timeout=10)  # and never let back
        assert isinstance(client.close_reason, conat.Unauthorized)
        with pytest.raises(conat.Unauthorized):
            await credentials.fetch()
        # the account's other key was kicked too (same account) and came back with a fresh token
        await until(lambda: ada.client.statistics().reconnects > before[1], timeout=5)
        assert (await ada.accounts.whoami()).name == "ada2"
    finally:
        await client.aclose()
        await ada.aclose()


async def test_a_join_token_works_once_and_the_host_gets_its_own_key(platform: Platform) -> None:
    made = await platform.admin.hosts.create("joiner")
    host_id = made.host.host_id
    assert made.join_token and made.expires > time.time()
    async with await conat.connect(platform.url, credentials=made.join_token) as joining:
        api = joining.service(MasterHostApi, master_host_api(host_id), timeout=10)
        registration = await api.register(RegisterRequest(bus_url=""))
    assert registration.host_id == host_id and registration.api_key
    assert set(registration.public_keys) == set(platform.server.context.issuer.keyring.kids)
    with pytest.raises(conat.Unauthorized):  # one-time: refused as replayed
        await conat.connect(platform.url, credentials=made.join_token, connect_attempts=1)
    # the host's own key stands for it from now on (exchanged at master's callout)
    async with await conat.connect(
        platform.url, token=registration.api_key, inbox_prefix=inbox_prefix(host_scope(host_id)), connect_attempts=1
    ) as exchanged:  # fmt: skip
        api = exchanged.service(MasterHostApi, master_host_api(host_id), timeout=10)
        tokens: HostTokens = await api.tokens()
        assert conat.auth.peek_claims(tokens.host_token).aud == host_scope(host_id)
        assert conat.auth.peek_claims(await api.master_token()).sub == host_scope(host_id)
    assert (await platform.admin.hosts.get(host_id)).status == "new"  # no bus yet: not online


async def test_keepalives_make_a_host_online_and_silence_offline(platform: Platform) -> None:
    host_id, client, api = await platform.host(platform.admin, "beating")
    try:
        assert (await platform.admin.hosts.get(host_id)).status == "online"
        await until(lambda: _status(platform, host_id, "offline"), timeout=10)  # no more keepalives
        reply = await api.keepalive(Keepalive(capacity=7))
        assert reply.interval == platform.server.config.keepalive_interval
        info = await platform.admin.hosts.get(host_id)
        assert (info.status, info.capacity) == ("online", 7)  # committed with the change of status
        log = await platform.server.context.db.audit_log(target=f"host-{host_id}")
        assert [e.action for e in log if e.action in ("online", "offline", "host.register")] == [
            "host.register", "offline", "online"
        ]  # fmt: skip
    finally:
        await client.aclose()


async def _status(platform: Platform, host_id: str, status: str) -> bool:
    return (await platform.admin.hosts.get(host_id)).status == status


async def test_refusals_have_clear_codes(platform: Platform) -> None:
    bob = await platform.account("bob")
    try:
        assert await _code(bob.projects.create("nowhere")) == "no-host"  # no host bob may use
        ghost = (await bob.hosts.create("ghost")).host.host_id  # never joined
        assert await _code(bob.projects.create("p", ghost)) == "host-offline"
        full_id, full, _ = await platform.host(bob, "full", capacity=0)
        try:
            assert await _code(bob.projects.create("p", full_id)) == "no-capacity"
            assert await _code(bob.projects.create("p")) == "no-capacity"
        finally:
            await full.aclose()
        assert await _code(bob.projects.create("")) == 400
        assert await _code(bob.projects.create("rm\x7f")) == 400  # DEL is a control character too
        assert await _code(bob.hosts.create("h", "eu\x1b[2J")) == 400  # a region that clears a screen
        assert await _code(bob.accounts.create_api_key("k" * 101)) == 400
        assert await _code(bob.projects.create("p", "not-a-uuid")) == 400
        assert await _code(bob.projects.create("p", None, {"memory_mb": 1})) == 400  # type: ignore[arg-type]
        unknown = str(uuid.uuid4())
        for call in (
            bob.projects.get(unknown),
            bob.projects.start(unknown),
            bob.projects.move(unknown, ghost),
        ):
            assert await _code(call) == "unknown-project"
        assert await _code(bob.hosts.get(str(uuid.uuid4()))) == "unknown-host"
        # typed on the caller's side, with their fields (registered with conat's error registry)
        with pytest.raises(HostOffline) as offline:
            await bob.projects.create("p", ghost)
        assert isinstance(offline.value, conat.RemoteError) and offline.value.host_id == ghost
        with pytest.raises(UnknownProject) as missing:
            await bob.projects.get(unknown)
        assert missing.value.project_id == unknown
        assert (
            await _code(bob.tokens.connect(ghost)) == "host-offline"
        )  # not registered: no bus to connect to
        with pytest.raises(conat.RemoteError) as unknown_method:
            await bob.client.request(
                master_account_api(bob.account_id), conat.RpcRequest("projects.nothing"), timeout=10
            )
        assert unknown_method.value.code == 404
    finally:
        await bob.aclose()


async def test_a_host_cannot_act_as_master_another_host_or_an_account(platform: Platform) -> None:
    _, client, _ = await platform.host(platform.admin, "confined")
    other_id, other, _ = await platform.host(platform.admin, "other")
    admin_api = master_account_api(platform.admin.account_id)
    try:
        with pytest.raises(conat.Forbidden):  # cannot create a project (the account API is not its)
            await client.request(admin_api, conat.RpcRequest("projects.create", ["x"]), timeout=5)
        with pytest.raises(conat.Forbidden):  # cannot call another host's runner
            await client.request(runner_host(other_id), conat.RpcRequest("list"), timeout=5)
        with pytest.raises(conat.Forbidden):  # nor listen in on it
            await client.subscribe(runner_host(other_id))
        with pytest.raises(conat.Forbidden):  # nor on master's own database or anything else of master's
            await client.subscribe("master.>")
        # master's database and keys are files of master's data dir, 0700/0600, never on a bus
        data = platform.server.config.data
        assert data.stat().st_mode & 0o777 == 0o700
        assert (data / "master.sqlite").stat().st_mode & 0o777 == 0o600
        assert all(f.stat().st_mode & 0o077 == 0 for f in (data / "keys").iterdir())
    finally:
        await client.aclose()
        await other.aclose()


async def test_one_master_per_data_directory(platform: Platform) -> None:
    second = MasterServer(platform.server.config, providers=[])
    with pytest.raises(MasterLocked) as locked:
        await second.start()
    assert locked.value.code == "master-locked"
    assert (await platform.admin.accounts.whoami()).admin  # the first one is untouched


async def test_a_restarted_master_keeps_what_it_acknowledged(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    config = master_config(tmp_path_factory.mktemp("restart"))
    async with MasterServer(config, providers=[]) as first:
        key = await first.ensure_admin()
        async with await connect(key) as admin:
            host = (await admin.hosts.create("kept", capacity=3)).host
            made = await admin.accounts.create("kept-account")
    async with MasterServer(config, providers=[]) as second:
        assert await second.ensure_admin() == ApiKeyFile(master=second.url, account_id=key.account_id,
                                                         api_key=key.api_key)  # fmt: skip
        async with await connect(key) as admin:
            assert (await admin.hosts.get(host.host_id)).capacity == 3
        kept = ApiKeyFile(master=second.url, account_id=made.account.account_id, api_key=made.api_key)
        async with await connect(kept) as account:
            assert (await account.accounts.whoami()).name == "kept-account"
