"""Children that die with their parent (thread), and stopping a process by pid: real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conat import die_with_parent
from conat._paths import pid_alive
from conat._process import LAUNCHER_EXIT, parent_pid, stop_pid, wait_gone

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

SLEEP = ["sleep", "60"]


@linux_only
def test_a_child_dies_when_the_thread_that_started_it_exits() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        child = subprocess.Popen(die_with_parent(SLEEP))
        started.append(child)
        # Live until the launcher has set the signal and exec'ed the program: a thread that ends
        # before then hands the child to another thread of the process (see conat._process).
        while not pid_alive(child.pid, expect="sleep"):
            time.sleep(0.01)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    (child,) = started
    try:
        assert child.wait(10) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@linux_only
def test_a_child_lives_while_its_parent_thread_does_and_keeps_its_pid() -> None:
    child = subprocess.Popen(die_with_parent(SLEEP))
    try:
        assert not wait_gone(child.pid, 0.3)  # the main thread lives: so does the child
        assert pid_alive(child.pid, expect="sleep")  # the launcher exec'ed into the program itself
        assert parent_pid(child.pid) == os.getpid()
    finally:
        child.kill()
        child.wait()


@linux_only
def test_the_launcher_refuses_to_run_for_a_parent_already_gone() -> None:
    argv = die_with_parent(["true"])
    argv[argv.index(str(os.getpid()))] = "1"  # as if it had been re-parented to init before prctl
    assert subprocess.run(argv, check=False).returncode == LAUNCHER_EXIT


def test_die_with_parent_needs_a_command() -> None:
    with pytest.raises(ValueError, match="argv"):
        die_with_parent([])


def test_stop_pid_terminates_then_kills() -> None:
    polite = subprocess.Popen(SLEEP)
    ignore_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)"
    )
    stubborn = subprocess.Popen(
        [sys.executable, "-c", f"{ignore_term}; time.sleep(60)"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
        # They are our children: reap them on a thread, as a shell would, so they do not linger as zombies.
        for child in (polite, stubborn):
            threading.Thread(target=child.wait, daemon=True).start()
        assert stop_pid(polite.pid, expect="sleep", timeout=5) is False
        assert stop_pid(stubborn.pid, expect="python", timeout=0.5) is True
        assert not pid_alive(polite.pid, expect="sleep") and not pid_alive(stubborn.pid, expect="python")
        assert stop_pid(polite.pid, expect="sleep", timeout=5) is False  # gone: left alone
    finally:
        for child in (polite, stubborn):
            if child.poll() is None:
                child.kill()
            child.wait()
        assert stubborn.stdout is not None
        stubborn.stdout.close()


def test_stop_pid_leaves_a_pid_that_runs_another_program_alone() -> None:
    other = subprocess.Popen(SLEEP)
    try:
        assert stop_pid(other.pid, expect="nats-server", timeout=1) is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_parent_pid() -> None:
    assert parent_pid(os.getpid()) == os.getppid()
    assert parent_pid(2**22 + 12345) is None
