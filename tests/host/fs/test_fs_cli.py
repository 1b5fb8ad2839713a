"""``conat fs``: real subprocesses against a real file server on the session nats-server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conat import NatsServer
from conat.cli import cli
from host import FileServer

pytestmark = pytest.mark.anyio


async def conat_fs(url: str, *args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    """One-shot commands run in-process (click's runner, on a thread with its own event loop)."""
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, cli, ["--url", url, "fs", *args], input=stdin)
    return result.exit_code, result.stdout_bytes, result.stderr_bytes


async def test_ls_cat_put_rm_snapshot(
    nats_server: NatsServer, server: FileServer, project: str, root: Path
) -> None:
    url = nats_server.url
    (root / "dir").mkdir()
    (root / "dir" / "a.txt").write_text("hello\n")
    code, out, _ = await conat_fs(url, "ls", project)
    assert (code, out) == (0, b"dir/\n")
    code, out, _ = await conat_fs(url, "ls", project, "dir", "-l", "--json")
    assert code == 0 and json.loads(out)["name"] == "a.txt" and json.loads(out)["size"] == 6
    code, out, _ = await conat_fs(url, "cat", project, "dir/a.txt")
    assert (code, out) == (0, b"hello\n")
    data = bytes(range(256)) * 5000
    code, out, _ = await conat_fs(url, "put", project, "dir/b.bin", stdin=data)
    assert code == 0 and b"wrote 1280000 bytes" in out
    assert (root / "dir" / "b.bin").read_bytes() == data
    code, out, _ = await conat_fs(url, "ls", project, "-R")
    assert out.split() == [b"dir/", b"dir/a.txt", b"dir/b.bin"] or sorted(out.split()) == sorted(
        [b"dir/", b"dir/a.txt", b"dir/b.bin"]
    )
    code, _, err = await conat_fs(url, "cat", project, "missing")
    assert code == 2 and b"ENOENT" in err
    code, _, err = await conat_fs(url, "cat", project, "../../etc/passwd")
    assert code == 2 and b"OUTSIDE_ROOT" in err
    code, _, err = await conat_fs(url, "ls", "not-a-uuid")
    assert code == 1
    code, out, _ = await conat_fs(url, "snapshot", "create", project, "s1")
    assert code == 0 and out.startswith(b"snapshot s1")
    code, out, _ = await conat_fs(url, "rm", project, "dir", "-r")
    assert code == 0 and not (root / "dir").exists()
    code, out, _ = await conat_fs(url, "snapshot", "restore", project, "s1")
    assert code == 0 and (root / "dir" / "a.txt").read_text() == "hello\n"
    code, out, _ = await conat_fs(url, "snapshot", "list", project)
    assert (code, out) == (0, b"s1\n")


async def test_watch_prints_events(
    nats_server: NatsServer, server: FileServer, project: str, root: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conat.cli", "--url", nats_server.url, "--json", "fs", "watch", project,
        "--count", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert json.loads(ready) == {"type": "ready", "path": ""}
    (root / "new.txt").write_text("x")
    event = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert json.loads(event) == {"type": "add", "path": "new.txt"}
    assert await asyncio.wait_for(proc.wait(), 30) == 0
