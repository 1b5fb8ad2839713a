"""Helpers of the CLI tests: ``invoke`` (click's ``CliRunner``) and ``Proc`` (``python -m conat.cli``).

Test modules import the ``procs`` fixture from here along with the helpers.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conat.cli import cli

STARTUP = 15.0  # seconds a subprocess gets to print its ready line


# -- helpers ----------------------------------------------------------------------------------


def invoke(args: list[str], env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False, prog_name="conat")


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Proc:
    """``python -m conat.cli ARGS`` with its stdout/stderr read line by line on threads."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        child_env = {k: v for k, v in os.environ.items() if k != "CONAT_URL"}
        child_env.update(env or {})
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "conat.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            env=child_env,
        )
        self.lines: dict[str, queue.Queue[str | None]] = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.seen: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._threads = [
            threading.Thread(target=self._pump, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))
        ]
        for t in self._threads:
            t.start()

    def _pump(self, name: str, stream: Any) -> None:
        for line in stream:
            self.lines[name].put(line.rstrip("\n"))
        self.lines[name].put(None)

    def expect(self, name: str, needle: str, timeout: float = STARTUP) -> str:
        """Wait for a line of ``name`` (stdout/stderr) containing ``needle``; return it."""
        while True:
            try:
                line = self.lines[name].get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {needle!r} on {name} after {timeout} s; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"{name} ended without {needle!r}; saw {self.seen}")
            self.seen[name].append(line)
            if needle in line:
                return line

    def finish(self, timeout: float = 15.0) -> tuple[int, str, str]:
        """Wait for exit; return (code, rest of stdout, rest of stderr)."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise
        for t in self._threads:
            t.join(5)
        rest = {}
        for name, q in self.lines.items():
            items = []
            while not q.empty():
                item = q.get()
                if item is not None:
                    items.append(item)
            self.seen[name].extend(items)
            rest[name] = "\n".join(items)
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self.popen.stdout.close()
        self.popen.stderr.close()
        return code, rest["stdout"], rest["stderr"]

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.finish()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Subprocesses a test starts; any still running at the end are killed."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()
