"""``conat run myapp.services:Counter`` from the project directory, through the ``conat`` script.

The console script's own directory (``.venv/bin``) heads ``sys.path``, not the current directory
(unlike ``python -m``), so ``conat run`` must put the current directory on the import path itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conat._server import NatsServer

SERVICES = """
from actors import Actor


class Counter(Actor, subject="myapp.counter"):
    async def add(self, n: int) -> int:
        return n + 1
"""


def _conat_script() -> Path:
    script = Path(sys.executable).parent / "conat"
    if not script.is_file():
        pytest.skip("no `conat` console script next to the interpreter (not installed with pip)")
    return script


def test_conat_run_imports_a_module_of_the_current_directory(nats_server: NatsServer, tmp_path: Path) -> None:
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "services.py").write_text(SERVICES)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONAT_URL")}
    proc = subprocess.Popen(
        [str(_conat_script()), "--url", nats_server.url, "run", "myapp.services:Counter", "--json"],
        cwd=tmp_path, env=env, text=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=20)[1]  # stderr: why it ended
        event = json.loads(line)
        assert (event["event"], event["actor"], event["subject"]) == ("serving", "Counter", "myapp.counter")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)
