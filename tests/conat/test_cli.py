"""The ``conat`` command line, against real nats-servers.

One-shot commands (``pub``, ``req``) run in-process with click's ``CliRunner``; long-running ones
(``sub``, ``reply``, ``server``, ``up``) run as real subprocesses (``python -m conat.cli``), which
also exercises signals, flushing of piped output, and the state file.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio.from_thread
import click
import pytest
from click.testing import CliRunner, Result

import conat
from conat.cli import cli
from conat.cli._app import exit_code_for
from conat.cli._output import Printer, message_fields, parse_headers, payload

STARTUP = 15.0  # seconds a subprocess gets to print its ready line


# -- helpers ----------------------------------------------------------------------------------


def invoke(args: list[str], env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


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


@pytest.fixture(scope="module")
def responders(nats_server: Any) -> Iterator[str]:
    """Library-side responders on ``clitest.*`` (running on a private event-loop thread): the URL."""

    async def echo(msg: conat.Message) -> None:
        await msg.respond(msg.data)

    async def fail(msg: conat.Message) -> None:
        await msg.respond_error("ENOENT", "no such file: a/b")

    async def silent(msg: conat.Message) -> None:
        return None

    async def stream(msg: conat.Message) -> None:
        for i in (1, 2, 3):
            await msg.respond(i)
        await msg.end()

    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        client = portal.call(conat.connect, nats_server.url)
        try:
            for subject, handler in (
                ("clitest.echo", echo),
                ("clitest.fail", fail),
                ("clitest.silent", silent),
                ("clitest.stream", stream),
            ):
                portal.call(partial(client.subscribe, subject, callback=handler))
            yield nats_server.url
        finally:
            portal.call(client.aclose)


# -- pure helpers -----------------------------------------------------------------------------


def test_payload_parsing_and_templates() -> None:
    assert payload("42", "msgpack") == 42
    assert payload('{"a": [1, 2]}', "json") == {"a": [1, 2]}
    assert payload("hello world", "msgpack") == "hello world"
    assert payload('{"n": {{count}}}', "json", 3) == {"n": 3}
    assert payload("n={{.Count}}", "msgpack", 7) == "n=7"
    assert payload("42", "raw") == b"42"


def test_parse_headers() -> None:
    assert parse_headers(["X-Id: 7", "Trace:a:b"]) == {"X-Id": "7", "Trace": "a:b"}
    assert parse_headers([]) is None
    for bad in ("novalue", ":v", "Conat-Encoding:raw"):
        with pytest.raises(click.BadParameter):
            parse_headers([bad])


def test_message_fields_show_raw_bytes_as_text_or_base64() -> None:
    text = conat.Message("s", "", b"hi", {"Conat-Encoding": "raw", "K": "v"})
    assert message_fields(text) == {"subject": "s", "data": "hi", "encoding": "raw", "headers": {"K": "v"}}
    binary = conat.Message("s", "", b"\xff\x00", {"Conat-Encoding": "raw"})
    assert message_fields(binary)["data_base64"] == "/wA="
    undecodable = conat.Message("s", "", b"\xc1", None)  # not msgpack: shown raw
    assert message_fields(undecodable)["encoding"] == "raw"


def test_human_message_line(capsys: pytest.CaptureFixture[str]) -> None:
    Printer(json=False).message(conat.Message("a.b", "", conat.MSGPACK.encode({"x": 1}), {"K": "v"}), 2)
    assert capsys.readouterr().out == '[#2] a.b: {"x":1}\n    K: v\n'


def test_exit_code_table() -> None:
    assert exit_code_for(conat.NoResponders("s")) == 4
    assert exit_code_for(conat.Timeout("s", 1.0)) == 3
    assert exit_code_for(conat.RemoteError(500, "boom")) == 2
    assert exit_code_for(conat.Forbidden("s", "publish")) == 5
    assert exit_code_for(conat.ConnectError("u", "r")) == 6
    assert exit_code_for(conat.ServerError("x")) == 6
    assert exit_code_for(conat.ClosedError()) == 6
    assert exit_code_for(conat.InvalidSubject("a..b", "empty-token")) == 1
    assert exit_code_for(conat.PayloadError("encode", "raw", "x")) == 1


# -- usage ------------------------------------------------------------------------------------


def test_help_lists_commands() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("up", "server", "pub", "sub", "req", "reply", "bench"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["req"],  # missing SUBJECT
        ["pub", "a.b", "x", "--count", "0"],
        ["pub", "a.b", "x", "--header", "novalue"],
        ["req", "a.b", "1", "--max", "2"],  # --max needs --many
        ["nope"],
    ],
)
def test_usage_errors_exit_1(args: list[str]) -> None:
    result = invoke(["--url", "nats://127.0.0.1:1", *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output


def test_bad_subject_exits_1_naming_the_token() -> None:
    result = invoke(["--url", "nats://127.0.0.1:1", "pub", "clitest..x", "1"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "conat: error: invalid subject 'clitest..x': token 1 '' is empty (code 400)"
    )
    result = invoke(["--url", "nats://127.0.0.1:1", "sub", "a.>.b"])
    assert result.exit_code == 1 and "'>'" in result.stderr and "Traceback" not in result.stderr


def test_debug_adds_the_traceback() -> None:
    result = invoke(["--debug", "--url", "nats://127.0.0.1:1", "req", "a b", "1"])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().endswith("contains whitespace (code 400)")


@pytest.mark.parametrize("url", ["nats://127.0.0.1:1", "foo://nowhere"])
def test_cannot_connect_exits_6(url: str) -> None:
    result = invoke(["--url", url, "req", "clitest.echo", "1"])
    assert result.exit_code == 6
    assert result.stderr.startswith(f"conat: error: cannot connect to {url}")
    assert len(result.stderr.splitlines()) == 1


def test_interrupt_exits_130_for_one_shot_and_0_for_sub(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(coro: Any) -> None:
        coro.close()
        raise KeyboardInterrupt

    monkeypatch.setattr("conat.cli._bus.run", interrupted)
    assert invoke(["req", "a.b", "1"]).exit_code == 130
    assert invoke(["sub", "a.b"]).exit_code == 0


# -- requests ---------------------------------------------------------------------------------


def test_req_prints_the_reply(responders: str) -> None:
    result = invoke(["--url", responders, "req", "clitest.echo", "hello"])
    assert (result.exit_code, result.stdout) == (0, "hello\n")
    result = invoke(["req", "clitest.echo", '{"a": [1, 2]}', "--json", "--url", responders])
    assert result.exit_code == 0
    assert json_lines(result.stdout) == [
        {"subject": "clitest.echo", "data": {"a": [1, 2]}, "encoding": "msgpack", "headers": {}}
    ]


def test_req_many_prints_every_reply(responders: str) -> None:
    result = invoke(["--json", "--url", responders, "req", "--many", "clitest.stream", "go"])
    assert result.exit_code == 0, result.output
    assert [line["data"] for line in json_lines(result.stdout)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["clitest.nobody", "1"], 4, "no responders on 'clitest.nobody' (code 503)"),
        (["clitest.silent", "1", "--timeout", "0.3"], 3, "timed out after"),
        (["clitest.fail", "1"], 2, "no such file: a/b (code ENOENT)"),
        (["--many", "clitest.nobody", "1"], 4, "(code 503)"),
    ],
)
def test_req_exit_codes(responders: str, args: list[str], code: int, message: str) -> None:
    result = invoke(["--url", responders, "req", *args])
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("conat: error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1


# -- long-running commands as subprocesses ----------------------------------------------------


def test_pub_to_sub_round_trip_with_count(nats_server: Any, procs: list[Proc]) -> None:
    sub = Proc(["--json", "--url", nats_server.url, "sub", "clitest.ps.>", "--count", "3"])
    procs.append(sub)
    sub.expect("stderr", "subscribed to clitest.ps.>")

    result = invoke(
        ["--url", nats_server.url, "pub", "clitest.ps.a", "msg {{count}}", "--count", "3", "-H", "X-Id:7"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "published 3 messages to clitest.ps.a\n"

    code, out, err = sub.finish()
    assert code == 0, err
    assert json_lines(out) == [
        {"subject": "clitest.ps.a", "data": f"msg {n}", "encoding": "msgpack", "headers": {"X-Id": "7"}}
        for n in (1, 2, 3)
    ]


def test_req_against_conat_reply(nats_server: Any, procs: list[Proc]) -> None:
    rep = Proc(["--url", nats_server.url, "reply", "clitest.rep", "--count", "2"])
    procs.append(rep)
    rep.expect("stderr", "replying on clitest.rep (echo)")

    result = invoke(["--json", "--url", nats_server.url, "req", "clitest.rep", '{"a": 1}'])
    assert result.exit_code == 0, result.output
    assert json_lines(result.stdout)[0]["data"] == {"a": 1}
    raw = invoke(["--url", nats_server.url, "req", "clitest.rep", "bytes!", "--encoding", "raw", "--json"])
    assert json_lines(raw.stdout)[0] | {"headers": None} == {
        "subject": "clitest.rep",
        "data": "bytes!",
        "encoding": "raw",
        "headers": None,
    }

    code, out, err = rep.finish()
    assert code == 0, err
    assert out.splitlines() == ['[#1] clitest.rep: {"a":1}', "[#2] clitest.rep: bytes!"]


def test_server_publishes_state_and_stops_on_sigint(tmp_path: Path, procs: list[Proc]) -> None:
    srv = Proc(["server", "--data-dir", str(tmp_path)])
    procs.append(srv)
    ready = srv.expect("stdout", "conat server ready at nats://127.0.0.1:")
    url = ready.split(" at ", 1)[1].split()[0]
    srv.expect("stdout", "Press Ctrl-C to stop.")
    state = tmp_path / "server.json"
    assert json.loads(state.read_text())["url"] == url

    # No --url: found through the state file.
    found = {"CONAT_DATA_DIR": str(tmp_path), "CONAT_URL": None}
    assert invoke(["pub", "clitest.srv", "hello"], env=found).exit_code == 0
    assert invoke(["req", "clitest.srv", "hello"], env=found).exit_code == 4

    srv.popen.send_signal(signal.SIGINT)
    code, out, err = srv.finish()
    assert code == 0, err
    assert "conat server stopped" in out
    assert not state.exists()


def test_up_once_runs_the_demo_conversation(tmp_path: Path, procs: list[Proc]) -> None:
    up = Proc(["up", "--once"], {"CONAT_DATA_DIR": str(tmp_path)})
    procs.append(up)
    code, out, err = up.finish(timeout=60)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("bus      nats-server ready at nats://127.0.0.1:")
    for expected in (
        'req      public.demo.greeter greet("Ada") -> "Hello, Ada!"',
        'req      public.demo.greeter greet("Grace") -> "Hello, Grace!"',
        'req      public.demo.greeter stats() -> {"greetings":2}',
        "stream   public.demo.count 5 -> 1 2 3 4 5 (5 replies, then end of stream",
        "pubsub   public.demo.events: published 3, received 3 in order",
        "socket   public.demo.socket.conat-up: sent one two three -> ONE TWO THREE in order",
        "chunked  public.demo.greeter echo(8 MiB) -> 8 MiB back, identical",
        # persist's part (an UpExtension found through an entry point): its service and demo step
        f"service  persist.*.>: persisted streams and KV stores, SQLite files under {tmp_path / 'sync'}",
        "persist  hub/demo: published 3 (seq 1..3), read back 3 in order",
        'kv       hub/demo-kv: put greeting="hello from conat up" (seq 1), get -> "hello from conat up"',
        # the host's part: a local host on its own bus, and a project created, run and deleted
        "service  host ",
        "project  ",
    ):
        assert any(line.startswith(expected) for line in lines), (expected, out)
    assert lines[-2:] == ["demo     ok", "bus      stopped"]
    assert err == ""
    assert not (tmp_path / "server.json").exists()
    assert (tmp_path / "sync" / "hub" / "demo.db").is_file()  # under the data dir


def test_up_once_json_lines(tmp_path: Path) -> None:
    result = invoke(["--json", "up", "--once"], env={"CONAT_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    events = json_lines(result.stdout)
    assert [e["event"] for e in events] == [
        "server", "service", "service", "service", "request", "request", "request", "stream", "pubsub",
        "socket", "chunked", "project", "persist", "kv", "demo", "stopped",
    ]  # fmt: skip
    chunked, project, stored, kv = events[10:14]
    assert chunked["bytes"] == 8 * 1024 * 1024 and chunked["identical"] is True
    assert events[2]["name"] == "host" and project["stdout"] == "hello from a project\n"  # host's part
    assert (events[3]["name"], events[3]["subject"]) == ("persist", "persist.*.>")
    assert (stored["scope"], stored["stream"], stored["seqs"]) == ("hub", "demo", [1, 2, 3])
    assert stored["values"] == [{"n": n, "text": f"message {n}"} for n in (1, 2, 3)]
    assert (kv["kv"], kv["key"], kv["value"]) == ("demo-kv", "greeting", "hello from conat up")
    assert not (tmp_path / "server.json").exists()


def test_up_keeps_serving_until_sigint(tmp_path: Path, procs: list[Proc]) -> None:
    up = Proc(["--json", "up"], {"CONAT_DATA_DIR": str(tmp_path)})
    procs.append(up)
    hint = json.loads(up.expect("stdout", '"event":"up"', timeout=60))
    assert hint["url"].startswith("nats://127.0.0.1:")
    assert all(json.loads(line) for line in up.seen["stdout"])  # every line is JSON

    # The hint's commands work, against the bus found through the state file.
    found = {"CONAT_DATA_DIR": str(tmp_path), "CONAT_URL": None}
    greet = invoke(["req", "public.demo.greeter", '{"name": "greet", "args": ["you"]}'], env=found)
    assert (greet.exit_code, greet.stdout) == (0, "Hello, you!\n")
    count = invoke(["--json", "req", "--many", "public.demo.count", "3"], env=found)
    assert [line["data"] for line in json_lines(count.stdout)] == [1, 2, 3]
    bad = invoke(["req", "public.demo.count", "0"], env=found)
    assert bad.exit_code == 2 and "(code 400)" in bad.stderr
    stored = invoke(["kv", "get", "hub", "demo-kv", "greeting"], env=found)  # up's persist service
    assert (stored.exit_code, stored.stdout) == (0, "hello from conat up\n")

    up.popen.send_signal(signal.SIGINT)
    code, out, err = up.finish()
    assert code == 0, err
    assert json_lines(out)[-1] == {"event": "stopped"}
    assert not (tmp_path / "server.json").exists()
