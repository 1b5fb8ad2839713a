"""End-to-end fixtures: the whole platform as real processes.

``conat master serve`` and ``conat host serve --config`` (with an ``[agent]`` table) run as
subprocesses of the test, each with its own data directory under a searchable /tmp directory
(projects run as their own uids and must reach their homes). Hosts are not children of master
here, so master can be killed and restarted while they keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conat.auth import write_private_file
from master import ApiKeyFile, MasterApi, connect

from ..conat.cli_support import Proc
from ..host.conftest import btrfs_loop, btrfs_skip_reason, searchable_tmp

KEEPALIVE = 0.5


@dataclass
class Platform:
    root: Path
    btrfs: Path | None = None
    """Where the hosts keep their projects when this machine can mount btrfs (moves then travel as
    ``btrfs send`` streams); ``None``: under their data dirs (moves travel as tar archives)."""
    procs: list[Proc] = field(default_factory=list)
    master: Proc | None = None
    hosts: dict[str, Proc] = field(default_factory=dict)

    @property
    def master_dir(self) -> Path:
        return self.root / "master"

    @property
    def key_file(self) -> Path:
        return self.root / "admin.key"

    def start_master(self) -> str:
        config = self.root / "master.toml"
        config.write_text(
            f'[master]\ndata_dir = "{self.master_dir}"\nkeepalive_interval = {KEEPALIVE}\n'
            "offline_after = 3\nlease = 3.0\nstart_timeout = 90.0\n"
        )
        proc = Proc(["--json", "master", "serve", "--config", str(config), "--admin-key", str(self.key_file)])
        self.procs.append(proc)
        ready = json.loads(proc.expect("stdout", '"event":"ready"', timeout=60))
        self.master = proc
        return str(ready["url"])

    def start_host(self, host_id: str, master_url: str, join_token: str | None = None) -> Proc:
        home = self.root / f"host-{host_id[:8]}"
        home.mkdir(exist_ok=True, mode=0o711)
        if join_token is not None:
            write_private_file(home / "join.token", join_token.encode())
        config = home / "host.toml"
        config.write_text(
            f'[host]\ndata_dir = "{home / "data"}"\nhost_id = "{host_id}"\nprojects_dir = "{self.projects(host_id)}"\n'
            f'public_keys = "{home / "data" / "master.pub"}"\ncredentials = "{home / "data" / "host.token"}"\n'
            "stop_grace = 2.0\nidle_check = 1.0\nstop_projects_on_shutdown = true\n\n"
            f'[agent]\nmaster = "{master_url}"\njoin_token_file = "{home / "join.token"}"\ntransfer_timeout = 3.0\n'
        )
        proc = Proc(["--json", "host", "serve", "--config", str(config)])
        self.procs.append(proc)
        self.hosts[host_id] = proc
        return proc

    def host_dir(self, host_id: str) -> Path:
        return self.root / f"host-{host_id[:8]}" / "data"

    def projects(self, host_id: str) -> Path:
        """The host's project homes."""
        if self.btrfs is not None:
            return self.btrfs / f"host-{host_id[:8]}"
        return self.host_dir(host_id) / "projects"

    async def admin(self) -> MasterApi:
        return await connect(ApiKeyFile.load(self.key_file))


@pytest.fixture
def platform() -> Iterator[Platform]:
    with searchable_tmp("e2e") as root, contextlib.ExitStack() as stack:
        btrfs: Path | None = None
        if btrfs_skip_reason() is None:
            (root / "btrfs").mkdir(mode=0o711)
            btrfs = stack.enter_context(btrfs_loop(root / "btrfs", 2 << 30))
            btrfs.chmod(0o711)
        running = Platform(root, btrfs)
        try:
            yield running
        finally:  # hosts first, gracefully: they stop their projects (no process outlives the test)
            for proc in running.hosts.values():
                if proc.popen.poll() is None:
                    proc.popen.send_signal(signal.SIGTERM)
            for proc in running.hosts.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(30)
            for proc in reversed(running.procs):
                proc.kill()
                if proc.popen.stdout is not None and not proc.popen.stdout.closed:
                    proc.finish()  # it had exited already: read what is left and close its pipes
            if os.environ.get("CONAT_KEEP_TMP") is not None:  # keep what the processes said, to debug
                for i, proc in enumerate(running.procs):
                    text = "\n".join(proc.seen["stdout"] + ["--- stderr"] + proc.seen["stderr"])
                    (root / f"proc-{i}.log").write_text(f"{proc.popen.args}\n{text}\n")


async def until(check: Callable[[], object], timeout: float = 30.0, step: float = 0.1) -> object:
    """Poll ``check`` (sync or async) until it returns something true; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(step)
