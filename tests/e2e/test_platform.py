"""The whole platform with real processes: master, two hosts (``conat host serve`` registered with
master), real projects.

One flow covers the issue's end-to-end list in order, since every step needs the ones before it:
create -> start (the bootlog shows the phases) -> files through fs.* -> exec -> a non-collaborator
kept out, a removed collaborator cut off within 2 s -> move to the other host (files and persist
stores intact, checksums equal) -> a move that fails halfway (the destination killed) leaves the
project intact on the source -> the killed host restarts and reconciles -> master killed with -9
and restarted loses nothing acknowledged while the hosts keep serving -> bad requests get their
codes -> stop.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

import conat
from conat.platform import Project
from host import exec_command, fs
from master import ApiKeyFile, MasterApi, connect
from persist import AKV, bootlog
from subjects import fs_project, project_subject

from .conftest import Platform, until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(400)]

BIG = 96 * 1024 * 1024  # big enough that the transfer is still running when its destination dies


async def _code(call: object) -> object:
    try:
        await call  # type: ignore[misc]
    except conat.RemoteError as e:
        return e.code
    raise AssertionError("the call was not refused")


async def _online(api: MasterApi, host_id: str) -> bool:
    info = await api.hosts.get(host_id)
    return info.status == "online" and bool(info.bus_url)


async def _sha(api: MasterApi, project_id: str, path: str) -> str:
    result = await api.projects.exec(project_id, ["sha256sum", path], timeout=120)
    assert result.code == 0, result
    return result.stdout.split()[0].decode()


async def _kv(api: MasterApi, project_id: str) -> object:
    async with await api.open_project(project_id) as host:
        return await AKV(host, f"project-{project_id}", "settings", timeout=20).get("colour")


async def test_the_platform_end_to_end(platform: Platform) -> None:
    url = platform.start_master()
    admin = await platform.admin()
    try:
        await _flow(platform, url, admin)
    finally:
        await admin.aclose()


async def _flow(platform: Platform, url: str, admin: MasterApi) -> None:
    t0 = time.monotonic()

    def step(name: str) -> None:
        print(f"{time.monotonic() - t0:7.1f}s {name}", flush=True)

    # -- two hosts join with one-time tokens ------------------------------------------------------
    made = [await admin.hosts.create(f"h{i}", shared=True) for i in (1, 2)]
    h1, h2 = (m.host.host_id for m in made)
    for m in made:
        platform.start_host(m.host.host_id, url, m.join_token)
    for host_id in (h1, h2):
        await until(lambda h=host_id: _online(admin, h), timeout=60)

    step("create, and start")
    # -- create, and start while following the bootlog -------------------------------------------
    project = await admin.projects.create("flow", host_id=h1)
    pid = project.project_id
    assert (project.host_id, project.state, project.desired) == (h1, "opened", "stopped")
    host = await admin.open_project(pid)
    try:
        phases: list[str] = []

        async def follow() -> None:
            async for event in bootlog.events(host, project_id=pid):
                phases.append(event.phase)
                if event.phase in ("ready", "error", "crash"):
                    return

        following = asyncio.ensure_future(follow())
        started = await admin.projects.start(pid)
        assert started.state in ("starting", "running")
        await asyncio.wait_for(following, 90)
        assert phases[-1] == "ready", phases
        assert {"create", "start", "prepare", "launch", "connect", "ready"} <= set(phases)
        assert await _code(admin.projects.start(pid)) == "already-running"

        # -- files through the file server, persist, exec ---------------------------------------
        files = fs(host, pid, timeout=60)
        await files.mkdir("notes")
        await files.write_file("notes/hello.txt", "hello, platform")
        assert await files.read_file("notes/hello.txt", "utf-8") == "hello, platform"
        await AKV(host, f"project-{pid}", "settings", timeout=20).set("colour", "blue")
        made_big = await admin.projects.exec(
            pid, ["sh", "-c", f"head -c {BIG} /dev/urandom > big.bin && sha256sum big.bin"], timeout=120
        )
        assert made_big.code == 0, made_big
        big_sha = made_big.stdout.split()[0].decode()
        assert (await admin.projects.exec(pid, ["cat", "notes/hello.txt"])).stdout == b"hello, platform"
    finally:
        await host.aclose()

    step("a non-collaborator")
    # -- a non-collaborator is kept out; a removed collaborator is cut off within 2 s -------------
    bob_made = await admin.accounts.create("bob")
    bob = await connect(
        ApiKeyFile(master=url, account_id=bob_made.account.account_id, api_key=bob_made.api_key)
    )
    try:
        await _collaborators(admin, bob, pid, h1)
    finally:
        await bob.aclose()

    step("move to the other ho")
    # -- move to the other host: files and persist stores intact -----------------------------------
    moved = await admin.projects.move(pid, h2)
    assert (moved.state, moved.source, moved.destination) == ("done", h1, h2)
    assert moved.transfer is not None and moved.transfer.bytes > BIG and len(moved.transfer.sha256) == 64
    after = await admin.projects.status(pid)
    assert (after.host_id, after.state, after.desired) == (h2, "running", "running")
    assert await _sha(admin, pid, "big.bin") == big_sha
    assert await _kv(admin, pid) == "blue"
    assert not (platform.projects(h1) / pid).exists()  # the source was cleaned
    async with await admin.open_project(pid) as host:
        assert await fs(host, pid).read_file("notes/hello.txt", "utf-8") == "hello, platform"
        events = [e async for e in bootlog.events(host, project_id=pid, follow=False)]
    moving = [e.phase for e in events]
    assert {"start", "ready", "move-block", "move-transfer", "import", "move-started", "move-done"} <= set(
        moving
    ), moving
    arrived = next(e.message for e in events if e.phase == "import")  # homes on btrfs: a send stream
    assert ("btrfs send stream" in arrived) == (platform.btrfs is not None), arrived

    # carol holds a token for h1's bus from before h1 goes down
    carol_made = await admin.accounts.create("carol")
    await admin.projects.add_collaborator(pid, carol_made.account.account_id)
    carol_key = ApiKeyFile(master=url, account_id=carol_made.account.account_id, api_key=carol_made.api_key)
    async with await connect(carol_key) as carol:
        carol_old = await carol.tokens.connect(h1)

    step("a move whose destination dies")
    # -- a move whose destination dies halfway leaves the project intact on its source -------------
    await _failed_move(platform, admin, pid, h1, h2, big_sha)
    await admin.projects.remove_collaborator(pid, carol_made.account.account_id)  # h1 is down: it misses it

    step("the killed host restarts")
    # -- the killed host restarts, catches up on revocations and reconciles ------------------------
    platform.start_host(h1, url)  # no join token: it registers again with its own key
    await until(lambda: _online(admin, h1), timeout=60)
    with pytest.raises(conat.Unauthorized):  # revoked while h1 was down: refused there from the start
        await conat.connect(carol_old.url, credentials=carol_old.token, connect_attempts=1)
    leftovers = platform.projects(h1) / pid
    await until(lambda: not leftovers.exists(), timeout=30)  # the aborted transfer is dropped there

    step("master killed")
    # -- master killed with -9 and restarted: nothing acknowledged lost, hosts keep serving -------
    await _master_restart(platform, admin, pid, h2)

    step("bad requests")
    # -- bad requests ------------------------------------------------------------------------------
    ghost = (await admin.hosts.create("ghost")).host.host_id
    assert await _code(admin.projects.create("x", ghost)) == "host-offline"
    assert await _code(admin.projects.get("00000000-0000-4000-8000-000000000000")) == "unknown-project"
    assert await _code(admin.projects.move(pid, ghost)) == "host-offline"
    assert await _code(admin.projects.exec(pid, [])) == 400
    assert await _code(admin.projects.create("x" * 300)) == 400

    step("stop")
    # -- stop -----------------------------------------------------------------------------------
    stopped = await admin.projects.stop(pid, wait=True)
    assert (stopped.state, stopped.desired) == ("opened", "stopped")


async def _collaborators(admin: MasterApi, bob: MasterApi, pid: str, host_id: str) -> None:
    status_subject = project_subject(pid, "status")
    outsider = await bob.open_host(host_id)  # bob may use the shared host, but has no project there
    try:
        for subject in (status_subject, fs_project(pid)):
            with pytest.raises(conat.Forbidden):
                await outsider.request(subject, conat.RpcRequest("project.status"), timeout=5)
        outsider.permissions = None  # the broker refuses it too, not only the client's own check
        with pytest.raises((conat.Forbidden, conat.Timeout)):
            await outsider.request(status_subject, b"", timeout=2)
        assert await _code(bob.projects.get(pid)) == "unknown-project"
    finally:
        await outsider.aclose()

    await admin.projects.add_collaborator(pid, bob.account_id)
    inside = await bob.open_project(pid)
    try:
        assert (
            await inside.request(status_subject, conat.RpcRequest("project.status"), timeout=20)
        ).data is not None
        removed_at = time.monotonic()
        await admin.projects.remove_collaborator(pid, bob.account_id)

        async def cut_off() -> bool:
            try:
                await inside.request(status_subject, conat.RpcRequest("project.status"), timeout=0.5)
            except conat.ConatError:
                return True
            return False

        await until(cut_off, timeout=2.0, step=0.02)
        assert time.monotonic() - removed_at < 2.0
        await asyncio.sleep(1.0)  # and it stays out: its fresh tokens no longer name the project
        assert await cut_off()
    finally:
        await inside.aclose()


async def _failed_move(
    platform: Platform, admin: MasterApi, pid: str, h1: str, h2: str, big_sha: str
) -> None:
    move = asyncio.ensure_future(admin.projects.move(pid, h1))

    async def sending() -> bool:  # members are blocked out of the host bus: the phase is in the reason
        project = await admin.projects.status(pid)
        return project.state == "moving" and ": transfer" in project.reason

    def arriving() -> bool:  # bytes are reaching the destination's staging file
        return any(f.stat().st_size > 0 for f in (platform.host_dir(h1) / "moves").glob("in-*"))

    await until(sending, timeout=120, step=0.05)
    await until(arriving, timeout=60, step=0.01)
    platform.hosts[h1].popen.send_signal(signal.SIGKILL)  # the destination dies mid-transfer
    platform.hosts[h1].finish()
    with pytest.raises(conat.RemoteError) as failed:
        await asyncio.wait_for(move, 180)
    assert failed.value.code == "move-failed" and "intact" in failed.value.remote_message
    back: Project = await admin.projects.status(pid)
    assert (back.host_id, back.state) == (h2, "running")
    assert await _sha(admin, pid, "big.bin") == big_sha
    assert await _kv(admin, pid) == "blue"
    await until(lambda: _offline(admin, h1), timeout=30)


async def _offline(api: MasterApi, host_id: str) -> bool:
    return (await api.hosts.get(host_id)).status == "offline"


async def _master_restart(platform: Platform, admin: MasterApi, pid: str, h2: str) -> None:
    kept = await admin.projects.create("kept", host_id=h2)  # acknowledged just before the kill
    helper = await admin.accounts.create("helper")
    await admin.projects.add_collaborator(kept.project_id, helper.account.account_id)
    host = await admin.open_project(pid)  # a host connection made while master was up
    try:
        assert platform.master is not None
        platform.master.popen.send_signal(signal.SIGKILL)
        platform.master.finish()
        result = await exec_command(host, pid, ["sha256sum", "big.bin"], timeout=60)  # master is down
        assert result.code == 0 and len(result.stdout.split()[0]) == 64
    finally:
        await host.aclose()
    url = platform.start_master()  # same data dir, same port
    async with await connect(ApiKeyFile.load(platform.key_file)) as fresh:
        again = await fresh.projects.get(kept.project_id)
        assert again.collaborators == [helper.account.account_id]
        assert (await fresh.projects.get(pid)).host_id == h2
        await until(lambda: _online(fresh, h2), timeout=30)

        async def running() -> bool:  # once the host's agent has reconnected to the new master
            return (await fresh.projects.status(pid)).state == "running"

        await until(running, timeout=30)
    assert url.startswith("nats://")

    async def reconnected() -> bool:  # the first admin connection found the restarted master by itself
        try:
            return (await admin.accounts.whoami()).admin
        except conat.ConatError:
            return False

    await until(reconnected, timeout=30)
    await admin.projects.delete(kept.project_id)
    assert await _code(admin.projects.get(kept.project_id)) == "unknown-project"
