"""A real host for the host tests: its own bus with the auth callout, persist, the runner, and real
project processes in their sandboxes. Keys are a test key ring (the host mints project tokens).

Directories under pytest's tmp dir are made searchable by others (0711): a project runs as its own
uid and must reach its home and token file (the host reports ``uid`` missing otherwise).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import conat
from conat.auth import Keyring, TokenIssuer
from host import HostConfig, HostServer, Limits, Runner, runner_proxy
from subjects import HUB, Scope, host_scope


@contextlib.contextmanager
def searchable_tmp(prefix: str) -> Iterator[Path]:
    """A fresh directory under /tmp that other users may search (0711), removed afterwards.

    Not pytest's tmp dirs: those are 0700 and shared with other runs that prune them.
    """
    path = Path(tempfile.mkdtemp(prefix=f"conat-{prefix}-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        if os.environ.get("CONAT_KEEP_TMP") is None:
            shutil.rmtree(path, ignore_errors=True)


def btrfs_skip_reason() -> str | None:
    """Why a btrfs filesystem cannot be made here for a test (``None``: it can)."""
    if os.geteuid() != 0:
        return "btrfs tests need root (mount -o loop)"
    if shutil.which("mkfs.btrfs") is None or shutil.which("btrfs") is None:
        return "btrfs-progs is not installed (apt-get install btrfs-progs)"
    if "btrfs" not in Path("/proc/filesystems").read_text():
        return "the kernel has no btrfs support"
    return None


@contextlib.contextmanager
def btrfs_loop(directory: Path, size: int = 512 << 20) -> Iterator[Path]:
    """A fresh btrfs filesystem of ``size`` bytes on a loop device, mounted at ``directory/mnt``
    while the block runs (the image is ``directory/img``).

    Raises:
        pytest.skip.Exception: one cannot be made here (see :func:`btrfs_skip_reason`).
    """
    why = btrfs_skip_reason()
    if why is not None:
        pytest.skip(why)
    image, mount = directory / "img", directory / "mnt"
    mount.mkdir()
    with open(image, "wb") as out:
        out.truncate(size)
    try:
        subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True, timeout=60)
        subprocess.run(
            ["mount", "-o", "loop", str(image), str(mount)], check=True, capture_output=True, timeout=60
        )
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"cannot make and mount a btrfs loop image here: {e}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True, timeout=60)


@dataclass
class Host:
    server: HostServer
    client: conat.Client  # the hub (master's principal)
    runner: Runner
    issuer: TokenIssuer

    @property
    def host_id(self) -> str:
        return self.server.host_id

    def token(self, principal: str, scope: Scope | None = None) -> str:
        return self.issuer.issue(principal, host_scope(self.host_id), scope or Scope(), 600)

    async def connect(self, principal: str, scope: Scope | None = None) -> conat.Client:
        return await conat.connect(self.server.url, credentials=self.token(principal, scope))

    async def new_project(self, limits: Limits | None = None, *, start: bool = True) -> str:
        project = str(uuid.uuid4())
        await self.runner.create(project, limits)
        if start:
            status = await self.runner.start(project, wait=60)
            assert status.state == "running", status
        return project


def make_config(tmp: Path, **options: object) -> HostConfig:
    keys = tmp / "keys"
    if not keys.exists():
        Keyring.open(keys)
    return HostConfig(
        data_dir=str(tmp / "data"),
        signing_keys=str(keys),
        stop_grace=2.0,
        idle_check=0.5,
        **options,  # type: ignore[arg-type]
    )


async def start_host(tmp: Path, **options: object) -> Host:
    config = make_config(tmp, **options)
    server = await HostServer(config).start()
    issuer = TokenIssuer(Keyring.open(config.signing_keys))
    client = await conat.connect(
        server.url, credentials=issuer.issue(HUB, host_scope(server.host_id), Scope(), 3600)
    )
    return Host(server, client, runner_proxy(client, server.host_id), issuer)


async def stop_host(host: Host) -> None:
    await host.client.aclose()
    await host.server.aclose()


@pytest.fixture(scope="module")
async def host() -> AsyncIterator[Host]:
    """One host for a test module, its projects stopped when the module ends."""
    with searchable_tmp("host") as tmp:
        running = await start_host(tmp, stop_projects_on_shutdown=True)
        try:
            yield running
        finally:
            await stop_host(running)
