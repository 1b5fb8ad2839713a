"""Bad input gets a clear code and the actor stays alive: wrong types, unknown methods, missing
projects, scopes that are not projects, garbage bodies and transfer requests, and the rate limit."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

import conat
from conat import RpcRequest
from conat.testing import FakeClock
from host import FileServer, FileServerConfig, FsClient, fs, io_subject, watch_subject
from subjects import fs_project

pytestmark = pytest.mark.anyio


async def code_of(call: object) -> str | int:
    with pytest.raises(conat.RemoteError) as info:
        await call  # type: ignore[misc]
    return info.value.code


async def test_bad_requests_get_codes_and_the_actor_stays_alive(
    client: conat.Client, f: FsClient, project: str, root: Path
) -> None:
    subject = fs_project(project)
    (root / "ok").write_text("ok")
    cases: list[tuple[object, str | int]] = [
        (RpcRequest("no_such_method", ["x"]), 404),
        (RpcRequest("stat", [123]), 400),
        (RpcRequest("stat", []), 400),
        (RpcRequest("write_file", ["x", {"not": "bytes"}]), "EINVAL"),
        (RpcRequest("mkdir", ["x"], {"parents": "yes"}), 400),
        (RpcRequest("rm", [["a", 5]]), 400),
        (RpcRequest("receive", ["x"]), 404),  # lifecycle hooks are not endpoints
        (RpcRequest("on_activate", []), 404),
        (RpcRequest("_sandbox", []), 404),
        ("just a string", 400),
        (b"\xc1\xc1 not msgpack", 400),
    ]
    for body, code in cases:
        encoding = "raw" if isinstance(body, bytes) else None
        with pytest.raises(conat.RemoteError) as info:
            await client.request(subject, body, timeout=10, encoding=encoding)
        assert info.value.code == code, (body, info.value)
    assert await f.read_file("ok") == b"ok"  # still serving


async def test_missing_project_and_non_project_scopes(client: conat.Client, server: FileServer) -> None:
    missing = fs(client, str(uuid.uuid4()))
    assert await code_of(missing.stat("")) == "ENOPROJECT"
    assert await code_of(missing.write_file("x", "y")) == "ENOPROJECT"
    for scope in ("hub", f"account-{uuid.uuid4()}", "not-a-scope"):
        with pytest.raises(conat.RemoteError) as info:
            await client.request(f"fs.{scope}", RpcRequest("stat", [""]), timeout=10)
        assert info.value.code == "EINVAL"
    # a project made later is served without restarting anything
    project = str(uuid.uuid4())
    late = fs(client, project)
    assert await code_of(late.stat("")) == "ENOPROJECT"
    await server.create_project(project)
    assert (await late.stat("")).type == "dir"


async def test_garbage_on_transfer_and_watch_sockets(client: conat.Client, f: FsClient, project: str) -> None:
    for subject in (io_subject(project), watch_subject(project)):
        sock = await client.socket_connect(subject, timeout=10)
        try:
            await sock.send({"op": "explode", "path": 7})
            msg = await sock.recv(timeout=10)
            assert msg.header("fs") == "error"
            assert msg.data["code"] == "EINVAL"
        finally:
            await sock.aclose()
    assert await f.exists("") is True


async def test_rate_limit_per_project(client: conat.Client, tmp_path: Path) -> None:
    config = FileServerConfig(projects=str(tmp_path / "p" / "[project_id]"), rate=5.0)
    async with FileServer(client, config) as server:
        project = str(uuid.uuid4())
        await server.create_project(project)
        f = fs(client, project)
        results = await asyncio.gather(*(f.exists("") for _ in range(40)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, conat.RemoteError)]
        assert refused and {r.code for r in refused} == {429}
        assert any(r is True for r in results)
        other = str(uuid.uuid4())
        await server.create_project(other)
        assert await fs(client, other).exists("") is True  # another project has its own bucket


async def test_rate_limit_runs_on_the_servers_clock(client: conat.Client, tmp_path: Path) -> None:
    """The per-project bucket refills with the file server's clock: exact under a fake clock."""
    clock = FakeClock()
    config = FileServerConfig(projects=str(tmp_path / "p" / "[project_id]"), rate=5.0)
    async with FileServer(client, config, clock=clock) as server:
        project = str(uuid.uuid4())
        await server.create_project(project)
        f = fs(client, project)
        assert [await f.exists("") for _ in range(5)] == [True] * 5
        with pytest.raises(conat.RemoteError) as refused:
            await f.exists("")
        assert refused.value.code == 429
        await clock.advance(0.2)  # one more token
        assert await f.exists("") is True
        with pytest.raises(conat.RemoteError):
            await f.exists("")


async def test_audit_log_records_mutations(f: FsClient, server: FileServer, project: str) -> None:
    await f.write_file("a", "secret data")
    await f.mkdir("d")
    with pytest.raises(conat.RemoteError):
        await f.rmdir("missing")
    await f.stat("a")  # not a mutation
    assert server.shared is not None and server.shared.audit is not None
    rows = await server.shared.audit.rows(f"project-{project}")
    assert [(r.method, r.paths, r.outcome) for r in rows] == [
        ("write_file", ["a"], "ok"),
        ("mkdir", ["d"], "ok"),
        ("rmdir", ["missing"], "ENOENT"),
    ]
    assert all("secret data" not in str(r) for r in rows)  # paths, never contents
