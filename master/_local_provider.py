"""The ``local`` provider: hosts as ``conat host serve`` processes on this machine.

Each host lives in ``<root>/<host id>/``: ``host.toml`` (its ``[host]`` and ``[agent]`` tables),
``join.token`` (0600, the one-time join token; used once, then the host keeps its own key in its
data dir), ``data/`` (the host's data dir) and ``host.log``. The process is this master's child
and dies with it (:func:`conat.die_with_parent`: SIGTERM when master goes, however it goes), and
its projects are stopped with it (``stop_projects_on_shutdown``), so nothing is left running
after ``conat up`` is killed. After a master restart, the reconcile loop finds the hosts stopped
and starts them again; they keep their data and re-register with their own key.

Processes are started from the event loop's thread (the parent-death signal follows the thread
that forked, see :mod:`conat._process`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Final

import conat
from conat.auth import write_private_file

from ._providers import ProviderCapabilities, ProviderHost

__all__ = ["LocalProvider"]

_STOP_GRACE: Final = 20.0


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {value!r} to TOML")


class LocalProvider:
    """See the module docstring. ``options`` are extra ``[host]`` settings for every host."""

    name = "local"

    def __init__(
        self, root: Path, *, options: dict[str, object] | None = None, python: str = sys.executable
    ) -> None:
        self.root = root
        self.options = dict(options or {})
        self.python = python
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    def capabilities(self) -> ProviderCapabilities:
        return ProviderCapabilities(name=self.name, regions=("local",), can_stop=True, persistent_disks=True)

    def directory(self, host_id: str) -> Path:
        return self.root / host_id

    def _write_config(self, host_id: str, master_url: str, capacity: int) -> Path:
        home = self.directory(host_id)
        data = home / "data"
        lines = [
            "[host]",
            f"data_dir = {_toml_value(str(data))}",
            f"host_id = {_toml_value(host_id)}",
            f"public_keys = {_toml_value(str(data / 'master.pub'))}",
            f"credentials = {_toml_value(str(data / 'host.token'))}",
            "stop_projects_on_shutdown = true",
            *(f"{k} = {_toml_value(v)}" for k, v in sorted(self.options.items()) if k != "limits"),
            "",
            "[agent]",
            f"master = {_toml_value(master_url)}",
            f"join_token_file = {_toml_value(str(home / 'join.token'))}",
            f"capacity = {capacity}",
        ]
        path = home / "host.toml"
        write_private_file(path, ("\n".join(lines) + "\n").encode())
        return path

    async def create(self, host_id: str, join_token: str, master_url: str, capacity: int) -> ProviderHost:
        home = self.directory(host_id)
        home.mkdir(parents=True, exist_ok=True, mode=0o711)
        home.chmod(0o711)  # projects (other uids) reach their token files under data/ by name
        write_private_file(home / "join.token", join_token.encode())
        self._write_config(host_id, master_url, capacity)
        return await self.start(host_id)

    async def start(self, host_id: str) -> ProviderHost:
        current = await self.status(host_id)
        if current.state != "stopped":
            return current
        home = self.directory(host_id)
        log = os.open(home / "host.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            argv = conat.die_with_parent([self.python, "-m", "conat.cli", "host", "serve", "--config",
                                          str(home / "host.toml")])  # fmt: skip
            self.processes[host_id] = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, cwd=home,
                start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(log)
        return ProviderHost(host_id=host_id, state="running", detail=f"pid {self.processes[host_id].pid}")

    async def stop(self, host_id: str) -> ProviderHost:
        process = self.processes.pop(host_id, None)
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), _STOP_GRACE)
            except TimeoutError:
                process.kill()
                await process.wait()
        return await self.status(host_id)

    async def delete(self, host_id: str) -> None:
        await self.stop(host_id)
        await asyncio.to_thread(shutil.rmtree, self.directory(host_id), True)

    async def status(self, host_id: str) -> ProviderHost:
        if not (self.directory(host_id) / "host.toml").exists():
            return ProviderHost(host_id=host_id, state="missing")
        process = self.processes.get(host_id)
        if process is None or process.returncode is not None:
            detail = f"exited with {process.returncode}" if process is not None else ""
            return ProviderHost(host_id=host_id, state="stopped", detail=detail)
        return ProviderHost(host_id=host_id, state="running", detail=f"pid {process.pid}")

    async def list(self) -> list[ProviderHost]:
        if not self.root.is_dir():
            return []
        names = [e.name for e in sorted(self.root.iterdir()) if (e / "host.toml").exists()]
        return [await self.status(name) for name in names]

    def pid(self, host_id: str) -> int | None:
        process = self.processes.get(host_id)
        return process.pid if process is not None and process.returncode is None else None

    async def aclose(self) -> None:
        """Stop every host this provider started (each stops its projects first)."""
        await asyncio.gather(*(self.stop(h) for h in list(self.processes)), return_exceptions=True)
