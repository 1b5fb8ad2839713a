"""``conat stream | kv | persist serve`` against a real nats-server, a real PersistServer and real SQLite.

One-shot commands run in-process with click's ``CliRunner``, against a PersistServer run on a
private event-loop thread; the ones that follow a feed (``tail``, ``watch``) or serve (``persist
serve``) run as real subprocesses (``python -m conat.cli``), so signals and flushing are real too.
``conat up --once`` (and its persist step) is covered in ``tests/conat/test_cli.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio.from_thread
import pytest
from click.testing import CliRunner, Result

import conat
from conat._server import NatsServer
from conat._server_config import ServerConfig
from conat.cli import cli
from conat.cli._demo import up_extensions
from persist import AStream, PersistServer, Placement, PlacementConfig
from persist._up import PersistUp

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
WAIT = 15.0  # seconds a subprocess gets for each expected line
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


# -- fixtures and helpers -----------------------------------------------------------------------


@dataclass
class Bus:
    url: str
    portal: anyio.from_thread.BlockingPortal
    client: conat.Client
    root: Path

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run a library call on the bus's event-loop thread."""
        return self.portal.call(partial(fn, *args, **kwargs))

    def stream(self, scope: str, name: str, **kwargs: Any) -> AStream:
        return AStream(self.client, scope, name, **kwargs)

    def invoke(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--url", self.url, *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def bus(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """A PersistServer (files under a temporary root) on the session bus, on a private loop thread."""
    root = tmp_path_factory.mktemp("persist-cli")
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        client = portal.call(conat.connect, nats_server.url)
        server = PersistServer(client, Placement(PlacementConfig(root=str(root))))
        portal.call(server.start)
        try:
            yield Bus(nats_server.url, portal, client, root)
        finally:
            portal.call(server.aclose)
            portal.call(client.aclose)


@pytest.fixture
def scope() -> str:
    return f"project-{uuid.uuid4()}"


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Proc:
    """``python -m conat.cli ARGS`` with stdout/stderr read line by line on threads."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "CONAT_URL"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "conat.cli", *args], cwd=ROOT, env=env, text=True, encoding="utf-8",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.lines: dict[str, queue.Queue[str | None]] = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.threads = [
            threading.Thread(target=self._pump, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))
        ]
        for t in self.threads:
            t.start()

    def _pump(self, name: str, pipe: Any) -> None:
        for line in pipe:
            self.lines[name].put(line.rstrip("\n"))
        self.lines[name].put(None)

    def next(self, name: str = "stdout") -> str:
        try:
            line = self.lines[name].get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no line on {name} after {WAIT} s") from None
        assert line is not None, f"{name} ended; stderr: {self.rest('stderr')}"
        return line

    def rest(self, name: str) -> list[str]:
        out: list[str] = []
        while (line := self.lines[name].get(timeout=WAIT)) is not None:
            out.append(line)
        return out

    def wait(self) -> int:
        code = self.popen.wait(WAIT)
        for t in self.threads:
            t.join(WAIT)
        return code

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        for t in self.threads:
            t.join(WAIT)
        for pipe in (self.popen.stdout, self.popen.stderr):
            assert pipe is not None
            pipe.close()


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(*args: str) -> Proc:
        started.append(Proc(*args))
        return started[-1]

    yield start
    for p in started:
        p.close()


# -- conat stream ls / get ----------------------------------------------------------------------


def test_stream_ls_table_and_json(bus: Bus, scope: str) -> None:
    chat = bus.stream(scope, "chat", config={"max_msgs": 100, "discard": "new"})
    for text in ("hi", "there"):
        bus.call(chat.publish, text)
    bus.call(bus.stream(scope, "logs/build").publish, b"x" * 10)

    result = bus.invoke("stream", "ls", scope)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "NAME        COUNT  BYTES  FIRST  LAST  LIMITS",
        "chat            2      9      1     2  max_msgs=100 discard=new",
        "logs/build      1     12      1     1  -",
    ]

    result = bus.invoke("--json", "stream", "ls", scope, "--prefix", "lo")
    [entry] = json_lines(result.stdout)
    assert {k: v for k, v in entry.items() if k != "config"} == {
        "name": "logs/build", "count": 1, "bytes": 12, "first_seq": 1, "last_seq": 1,
    }  # fmt: skip
    assert entry["config"]["max_msgs"] == -1 and entry["config"]["sync"] == "full"

    empty = bus.invoke("stream", "ls", f"account-{uuid.uuid4()}")
    assert (empty.exit_code, empty.stdout) == (0, "")
    assert "no streams in account-" in empty.stderr


def test_a_corrupt_stream_is_listed_refused_and_reset(bus: Bus, scope: str) -> None:
    bus.call(bus.stream(scope, "fine").publish, 1)
    path = bus.root / "projects" / scope.removeprefix("project-") / "broken.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)

    for _ in range(2):  # found, moved aside; then refused, not read as empty
        got = bus.invoke("stream", "get", scope, "broken")
        assert got.exit_code == 2 and "(code corrupt)" in got.stderr and "conat stream reset" in got.stderr

    listed = bus.invoke("stream", "ls", scope)
    assert listed.exit_code == 0, listed.output  # one corrupt stream does not fail the listing
    broken, fine = listed.stdout.splitlines()[1:]
    assert broken.startswith("broken") and "corrupt: " in broken and fine.startswith("fine")
    entries = json_lines(bus.invoke("--json", "stream", "ls", scope).stdout)
    assert (entries[0]["name"], entries[0]["error"]) == ("broken", "corrupt") and entries[1]["count"] == 1

    nothing = bus.invoke("stream", "reset", "--restore", scope, "broken")  # no archive root here
    assert nothing.exit_code == 1, nothing.output  # the service's not-found exits 1, as a missing key does
    assert "(code not-found)" in nothing.stderr and "no archive is configured" in nothing.stderr
    reset = bus.invoke("--json", "stream", "reset", scope, "broken")
    assert reset.exit_code == 0, reset.output
    assert json_lines(reset.stdout) == [
        {"event": "reset", "scope": scope, "name": "broken", "restored": False, "moved_aside": []}
    ]
    again = bus.invoke("stream", "reset", scope, "broken")
    assert again.exit_code == 2 and "not quarantined" in again.stderr
    put = bus.invoke("--json", "kv", "put", scope, "broken", "k", "v")
    assert json_lines(put.stdout)[0]["seq"] == 1  # it started again


def test_stream_get_all_from_seq_and_key(bus: Bus, scope: str) -> None:
    s = bus.stream(scope, "events")
    bus.call(s.publish, "one")
    bus.call(s.publish, {"n": 2}, key="two", headers={"Trace": "t-2"})
    bus.call(s.publish, 3)

    result = bus.invoke("stream", "get", scope, "events")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert re.fullmatch(rf"#1  {TIME}  -  one", lines[0]), lines
    assert re.fullmatch(rf'#2  {TIME}  two  {{"n":2}}', lines[1]), lines
    assert lines[2] == "    Trace: t-2"
    assert re.fullmatch(rf"#3  {TIME}  -  3", lines[3]), lines

    result = bus.invoke("--json", "stream", "get", scope, "events", "--from", "2")
    got = json_lines(result.stdout)
    assert [(m["seq"], m["key"], m["value"]) for m in got] == [(2, "two", {"n": 2}), (3, None, 3)]
    assert set(got[0]) == {"seq", "time", "key", "value", "encoding", "headers", "ttl"}
    assert got[0]["headers"] == {"Trace": "t-2"} and got[0]["encoding"] == "msgpack"

    by_key = bus.invoke("--json", "stream", "get", scope, "events", "--key", "two")
    by_seq = bus.invoke("stream", "get", scope, "events", "--seq", "1")
    assert [m["seq"] for m in json_lines(by_key.stdout)] == [2]
    assert by_seq.stdout.endswith("  -  one\n")

    missing = bus.invoke("stream", "get", scope, "events", "--seq", "9")
    assert missing.exit_code == 1
    assert missing.stderr == f"conat: error: seq 9 in stream {scope}/events not found (code not-found)\n"
    both = bus.invoke("stream", "get", scope, "events", "--seq", "1", "--key", "two")
    assert both.exit_code == 1 and "exclude each other" in both.stderr


def test_raw_bytes_show_as_text_or_base64(bus: Bus, scope: str) -> None:
    s = bus.stream(scope, "raw", encoding="raw")
    bus.call(s.publish, b"text")
    bus.call(s.publish, b"\xff\x00")
    got = json_lines(bus.invoke("--json", "stream", "get", scope, "raw").stdout)
    assert (got[0]["value"], got[1]["value_base64"], got[1]["encoding"]) == ("text", "/wA=", "raw")


def test_stream_get_of_a_missing_stream_says_so(bus: Bus, scope: str) -> None:
    for args in ([], ["--from", "2"], ["--seq", "1"], ["--key", "k"]):
        result = bus.invoke("stream", "get", scope, "nothing", *args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stdout == ""
        assert result.stderr == f"conat: error: stream {scope}/nothing not found (code not-found)\n"
    assert bus.invoke("--json", "stream", "ls", scope).stdout == ""  # looking did not create it


# -- conat kv -----------------------------------------------------------------------------------


def test_kv_put_get_del(bus: Bus, scope: str) -> None:
    put = bus.invoke("kv", "put", scope, "settings", "theme", "dark")
    assert (put.exit_code, put.stdout) == (0, f"set theme in kv {scope}/settings (seq 1)\n")
    put = bus.invoke("--json", "kv", "put", scope, "settings", "limits", '{"max": 3}', "--json-value")
    [fields] = json_lines(put.stdout)
    assert (fields["key"], fields["seq"], fields["duplicate"]) == ("limits", 2, False)

    assert bus.invoke("kv", "get", scope, "settings", "theme").stdout == "dark\n"
    assert bus.invoke("kv", "get", scope, "settings", "limits").stdout == '{"max":3}\n'
    [got] = json_lines(bus.invoke("--json", "kv", "get", scope, "settings", "limits").stdout)
    assert (got["key"], got["value"], got["seq"]) == ("limits", {"max": 3}, 2)

    deleted = bus.invoke("kv", "del", scope, "settings", "theme")
    assert (deleted.exit_code, deleted.stdout) == (0, f"deleted theme from kv {scope}/settings\n")
    for command in ("get", "del"):
        missing = bus.invoke("kv", command, scope, "settings", "theme")
        assert missing.exit_code == 1, command
        assert missing.stdout == ""
        error = f"conat: error: key 'theme' in kv {scope}/settings not found (code not-found)\n"
        assert missing.stderr == error


def test_kv_put_with_ttl_and_refusals(bus: Bus, scope: str) -> None:
    ok = bus.invoke("kv", "put", scope, "session", "token", "abc", "--ttl", "60")
    assert ok.exit_code == 0, ok.output
    [got] = json_lines(bus.invoke("--json", "kv", "get", scope, "session", "token").stdout)
    assert got["ttl"] == 60.0

    bus.invoke("kv", "put", scope, "plain", "a", "1")
    refused = bus.invoke("kv", "put", scope, "plain", "b", "2", "--ttl", "5")  # the service refuses
    assert refused.exit_code == 2
    assert refused.stderr.startswith("conat: error: write rejected by allow_msg_ttl=False")
    assert refused.stderr.endswith("(code reject)\n")

    not_json = bus.invoke("kv", "put", scope, "plain", "c", "{nope", "--json-value")
    assert not_json.exit_code == 1 and "not JSON" in not_json.stderr


def test_kv_put_reads_the_value_from_stdin(bus: Bus, scope: str) -> None:
    def put(*args: str, stdin: str) -> Result:
        command = ["--url", bus.url, "kv", "put", scope, "notes", *args]
        return CliRunner().invoke(cli, command, input=stdin, catch_exceptions=False)

    assert put("dash", "-", stdin="from stdin\n").exit_code == 0  # `-`: stdin, as for `conat pub`
    assert put("none", stdin="no VALUE").exit_code == 0  # no VALUE: stdin too
    assert put("json", "-", "--json-value", stdin='{"a": [1]}').exit_code == 0
    assert bus.invoke("kv", "get", scope, "notes", "dash").stdout == "from stdin\n\n"
    assert bus.invoke("kv", "get", scope, "notes", "none").stdout == "no VALUE\n"
    assert bus.invoke("kv", "get", scope, "notes", "json").stdout == '{"a":[1]}\n'


@pytest.mark.parametrize(
    "args",
    [
        ["stream", "ls", "nope"],
        ["stream", "get", "project-123", "x"],
        ["stream", "tail", "Project-" + str(uuid.UUID(int=1)), "x"],
        ["kv", "get", "hubs", "x", "k"],
        ["kv", "watch", "", "x"],
    ],
)
def test_bad_scope_exits_1_before_connecting(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["--url", "nats://127.0.0.1:1", *args])
    assert result.exit_code == 1
    assert "is not a scope: use hub, project-<uuid>, account-<uuid> or host-<uuid>" in result.stderr
    assert "Traceback" not in result.output


def test_bad_name_exits_1_before_connecting() -> None:
    result = CliRunner().invoke(cli, ["--url", "nats://127.0.0.1:1", "kv", "put", "hub", "../x", "k", "v"])
    assert result.exit_code == 1
    assert result.stderr == (
        "conat: error: bad storage path 'hub/../x': it is outside its scope 'hub' (code outside-scope)\n"
    )


# -- following: stream tail, kv watch -----------------------------------------------------------


def test_stream_tail_follows_live_writes_and_stops_at_count(
    bus: Bus, scope: str, procs: Callable[..., Proc]
) -> None:
    s = bus.stream(scope, "chat")
    old = bus.call(s.publish, "before the tail")
    tail = procs("--json", "stream", "tail", scope, "chat", "--count", "2", "--url", bus.url)
    assert tail.next("stderr") == f"conat: following stream {scope}/chat after seq 1 (Ctrl-C stops)"

    bus.call(s.publish, "first", key="k")
    first = json.loads(tail.next())
    assert (first["event"], first["seq"], first["key"], first["value"]) == ("message", 2, "k", "first")
    bus.call(s.delete, seq=old.seq)
    assert json.loads(tail.next()) == {"event": "delete", "first_seq": 1, "last_seq": 1}
    bus.call(s.publish, "second")
    assert json.loads(tail.next())["value"] == "second"
    assert tail.wait() == 0  # --count 2: two messages (the delete does not count)
    assert tail.rest("stdout") == []

    # --from: the history first; Ctrl-C is a normal stop.
    again = procs("stream", "tail", scope, "chat", "--from", "1", "--url", bus.url)
    assert again.next("stderr").endswith("after seq 0 (Ctrl-C stops)")
    assert re.fullmatch(rf"#2  {TIME}  k  first", again.next())
    assert again.next().endswith("  -  second")
    again.popen.send_signal(signal.SIGINT)
    assert again.wait() == 0


def test_kv_watch_prints_items_then_a_put_and_a_del(bus: Bus, scope: str, procs: Callable[..., Proc]) -> None:
    assert bus.invoke("kv", "put", scope, "cfg", "a", "1", "--json-value").exit_code == 0
    watch = procs("kv", "watch", scope, "cfg", "--count", "2", "--url", bus.url)
    assert watch.next("stderr") == f"conat: watching kv {scope}/cfg (Ctrl-C stops)"
    assert watch.next() == "a=1"

    assert bus.invoke("kv", "put", scope, "cfg", "b", "two").exit_code == 0
    assert watch.next() == "set b=two"
    assert bus.invoke("kv", "del", scope, "cfg", "a").exit_code == 0
    assert watch.next() == "del a"
    assert watch.wait() == 0  # --count 2: the put and the del (the current item does not count)


def test_kv_watch_json_lines(bus: Bus, scope: str, procs: Callable[..., Proc]) -> None:
    bus.invoke("kv", "put", scope, "cfg", "a", "1")
    watch = procs("--json", "kv", "watch", scope, "cfg", "--count", "2", "--url", bus.url)
    watch.next("stderr")
    assert json.loads(watch.next()) == {"event": "item", "key": "a", "seq": 1, "value": "1"}
    bus.invoke("kv", "put", scope, "cfg", "a", "2")  # replaces seq 1: a set, never a del of a
    assert json.loads(watch.next()) == {"event": "set", "key": "a", "seq": 2, "value": "2"}
    bus.invoke("kv", "del", scope, "cfg", "a")
    assert json.loads(watch.next()) == {"event": "del", "key": "a", "seq": 2}
    assert watch.wait() == 0


# -- conat persist serve ------------------------------------------------------------------------


def test_persist_serve_places_files_and_stops_on_sigterm(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    server = NatsServer(ServerConfig(), directory=tmp_path / "nats")
    server.start_sync()
    try:
        config = tmp_path / "conat.toml"
        config.write_text(f'[sync]\nhub = "{tmp_path / "hub-files"}"\n')
        serve = procs("--json", "persist", "serve", "--root", str(tmp_path / "data"), "--config", str(config),
                      "--url", server.url)  # fmt: skip
        ready = json.loads(serve.next())
        assert (ready["event"], ready["subject"]) == ("ready", "persist.*.>")
        assert ready["root"] == str(tmp_path / "data")

        project = uuid.uuid4()
        run = partial(CliRunner().invoke, cli, catch_exceptions=False)
        assert run(["--url", server.url, "kv", "put", f"project-{project}", "notes", "k", "v"]).exit_code == 0
        assert run(["--url", server.url, "kv", "put", "hub", "notes", "k", "v"]).exit_code == 0
        assert (tmp_path / "data" / "projects" / str(project) / "notes.db").is_file()  # --root
        assert (tmp_path / "hub-files" / "notes.db").is_file()  # the TOML's [sync] hub

        serve.popen.send_signal(signal.SIGTERM)
        assert serve.wait() == 0
        assert json_lines("\n".join(serve.rest("stdout"))) == [{"event": "stopped"}]
    finally:
        server.stop_sync()


def test_a_second_persist_serve_on_the_same_root_exits_1(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    server = NatsServer(ServerConfig(), directory=tmp_path / "nats")
    server.start_sync()
    try:
        args = ("--url", server.url, "persist", "serve", "--root", str(tmp_path / "data"))
        first = procs("--json", *args)
        assert json.loads(first.next())["event"] == "ready"
        second = procs(*args)
        assert second.wait() == 1
        error = "\n".join(second.rest("stderr"))
        assert "is in use by another persist service (pid " in error and "(code root-in-use)" in error
        assert str(tmp_path / "data") in error
        assert first.popen.poll() is None  # the first one serves on
        first.popen.send_signal(signal.SIGTERM)
        assert first.wait() == 0
    finally:
        server.stop_sync()


_FAILING_SERVE = """
import sys
import persist._service

async def crash(self):  # every activation fails: the service crashes until it gives up
    raise RuntimeError("activation crashed")

persist._service.PersistService.on_activate = crash
from conat.cli import main
sys.argv[0] = "conat"
main()
"""


def test_persist_serve_exits_non_zero_when_the_service_gives_up(tmp_path: Path) -> None:
    """A service that gives up must end its process (exit 7), so a supervisor starts a fresh one;
    it used to stay up serving nothing."""
    server = NatsServer(ServerConfig(), directory=tmp_path / "nats")
    server.start_sync()
    args = ["--json", "--url", server.url, "persist", "serve", "--root", str(tmp_path / "data")]
    proc = subprocess.Popen(
        [sys.executable, "-c", _FAILING_SERVE, *args], cwd=ROOT, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["event"] == "ready"

        async def hammer() -> None:
            with anyio.fail_after(30):
                async with await conat.connect(server.url) as client:
                    while proc.poll() is None:
                        subject = f"persist.project-{uuid.uuid4()}.api"  # a new key: a new activation
                        with contextlib.suppress(conat.ConatError):
                            await client.request(subject, {"op": "get", "stream": "s", "seq": 1}, timeout=1)

        anyio.run(hammer)
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 7, err
        assert "gave up" in err and "(code escalated)" in err
        assert json_lines(out)[-1] == {"event": "failed", "code": "escalated"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        server.stop_sync()


def test_persist_serve_refuses_a_bad_placement(tmp_path: Path) -> None:
    config = tmp_path / "conat.toml"
    config.write_text('[sync]\nhub = "relative/dir"\n')
    args = ["--url", "nats://127.0.0.1:1", "persist", "serve", "--config", str(config)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "must be an absolute path" in result.stderr and "(code bad-config)" in result.stderr


# -- layering -----------------------------------------------------------------------------------


def test_conat_reaches_persist_only_through_entry_points() -> None:
    """``import conat`` never imports persist; ``conat up`` finds persist's part as an extension."""
    code = "import sys, conat; assert not [m for m in sys.modules if m.split('.')[0] == 'persist']"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=WAIT)
    assert PersistUp in [type(e) for e in up_extensions()]  # beside the platform's


def test_up_with_two_persist_workers(tmp_path: Path) -> None:
    """``conat up --workers 2``: the bus splits persist.*.> two ways, two worker processes serve
    it, and the demo's stream and key (scope ``hub``) go through the partition that owns them."""
    try:
        result = CliRunner().invoke(
            cli, ["--json", "up", "--once", "--workers", "2"], env={"CONAT_DATA_DIR": str(tmp_path)},
            catch_exceptions=False, prog_name="conat",
        )  # fmt: skip
    finally:
        for up in up_extensions():
            up.workers = 1  # the extensions are shared objects: leave them as other tests expect
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    (persist,) = [e for e in events if e["event"] == "service" and e.get("name") == "persist"]
    assert persist["workers"] == 2 and len(persist["pids"]) == 2
    stored = next(e for e in events if e["event"] == "persist")
    assert stored["seqs"] == [1, 2, 3]
    assert events[-1]["event"] == "stopped"
