"""``conat up`` as the platform, with real processes: ``conat status`` shows master and its hosts,
a project runs through the admin's key file, and ``kill -9`` of ``conat up`` leaves nothing running
(no nats-server, no host, no project process): every child dies with its parent, and the hosts
stop their projects on the way out."""

from __future__ import annotations

import json
import signal
import sys

import psutil
import pytest

from master import ApiKeyFile, connect

from ..conat.cli_support import Proc, invoke
from ..host.conftest import searchable_tmp
from .conftest import until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
async def test_kill_9_of_conat_up_leaves_no_process_behind() -> None:
    with searchable_tmp("up") as data:
        env = {"CONAT_DATA_DIR": str(data)}
        up = Proc(["--json", "up", "--hosts", "1"], env)
        try:
            hint = json.loads(up.expect("stdout", '"event":"up"', timeout=180))
            assert any("conat projects list" in c for c in hint["try_commands"])
            status = invoke(["status"], env=env)  # type: ignore[arg-type]
            assert status.exit_code == 0, status.output
            assert "  master:    nats://127.0.0.1:" in status.stdout and "1 local host(s)" in status.stdout
            assert (data / "admin.key").stat().st_mode & 0o777 == 0o600

            async with await connect(ApiKeyFile.load(data / "admin.key")) as admin:
                project = await admin.projects.create("left running")
                assert (await admin.projects.start(project.project_id, wait=True)).state == "running"
            family = psutil.Process(up.popen.pid).children(recursive=True)
            names = {p.name() for p in family}
            assert "nats-server" in names and len(family) >= 5  # buses, master's host, the project
            projects = [p for p in family if "host.project" in " ".join(p.cmdline())]
            assert projects, [p.cmdline() for p in family]
        finally:
            up.popen.send_signal(signal.SIGKILL)
            up.finish()

        def all_gone() -> bool:
            return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)

        await until(all_gone, timeout=60, step=0.2)
