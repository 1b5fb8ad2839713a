"""The ``conat`` command line, against real nats-servers.

One-shot commands (``pub``, ``req``) run in-process with click's ``CliRunner``; long-running ones
(``sub``, ``reply``, ``server``, ``up``) run as real subprocesses (``python -m conat.cli``), which
also exercises signals, flushing of piped output, and the state file.
"""

from __future__ import annotations

import ast
import json
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio.from_thread
import click
import pytest

import conat
from conat.cli import cli
from conat.cli._app import EXIT_CODES, GLOBAL_OPTIONS, exit_code_for
from conat.cli._output import Printer, message_fields, parse_headers, payload

from .cli_support import Proc, invoke, json_lines, procs

__all__ = ["procs"]  # a fixture: imported to be found, used by name


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
    assert exit_code_for(conat.BadURL("foo://x", "unsupported scheme")) == 1  # a typo, not the network


def _documented_exit_codes() -> list[tuple[int, str]]:
    """The rows of the exit code table in docs/cli.md (``| code | meaning |``)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    table = text.split("| exit code | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in table.splitlines()[2:]]
    return [(int(code), meaning.strip().replace("`", "")) for code, meaning in rows]


def test_one_exit_code_table_in_help_and_docs() -> None:
    codes = [code for code, _ in EXIT_CODES]
    assert codes == sorted(codes) and len(set(codes)) == len(codes)
    assert {0, 1, 2, 3, 4, 5, 6, 7, 8, 130} == set(codes)
    assert _documented_exit_codes() == list(EXIT_CODES)
    shown = invoke(["--help"]).stdout.split("Exit codes:\n", 1)[1].splitlines()
    assert [line.split(None, 1) for line in shown[: len(EXIT_CODES)]] == [
        [str(code), meaning] for code, meaning in EXIT_CODES
    ]


# -- usage ------------------------------------------------------------------------------------


def test_help_lists_commands() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("up", "server", "status", "down", "pub", "sub", "req", "reply", "bench", "run"):
        assert command in result.stdout


@pytest.mark.parametrize("args", [[], ["stream"], ["kv"]])
def test_a_bare_group_prints_its_help(args: list[str]) -> None:
    result = invoke(args)
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: {' '.join(['conat', *args])} [OPTIONS] COMMAND [ARGS]...")
    assert "Commands:" in result.stdout
    assert result.stderr == "" and "Error" not in result.output


def _commands(group: click.Group, ctx: click.Context) -> Iterator[tuple[str, click.Command]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield name, command
        if isinstance(command, click.Group):
            yield from ((f"{name} {sub}", c) for sub, c in _commands(command, ctx))


def test_every_command_takes_every_global_option() -> None:
    commands = dict(_commands(cli, click.Context(cli)))
    assert {"run", "stream ls", "kv put", "persist serve", "bench", "status", "down"} <= set(commands)
    for name, command in commands.items():
        for option in GLOBAL_OPTIONS:
            assert any(option in param.opts for param in command.params), (name, option)


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_work_before_and_after_the_command(where: str, tmp_path: Path) -> None:
    def run(options: list[str], command: list[str]) -> Any:
        args = [*options, *command] if where == "before" else [*command, *options]
        return invoke(args)

    debug = run(["--debug", "--url", "nats://127.0.0.1:1"], ["req", "a b", "1"])
    assert debug.exit_code == 1 and "Traceback" in debug.stderr

    missing = tmp_path / "no-such-token"
    credentials = run(["--credentials", str(missing), "--url", "nats://127.0.0.1:1"], ["req", "x", "1"])
    assert credentials.exit_code == 1
    assert (
        credentials.stderr
        == f"conat: error: token file: {missing}: no such file (code missing)\n"
    )

    logged = run(["--log-level", "debug", "--url", "nats://127.0.0.1:1"], ["req", "x", "1"])
    assert logged.exit_code == 6 and " DEBUG conat." in logged.stderr

    plugin = run(
        ["--debug", "--json", "--url", "foo://x"], ["kv", "get", "hub", "x", "k"]
    )  # a plugin's subcommand
    assert plugin.exit_code == 1 and "Traceback" in plugin.stderr and "(code 400)" in plugin.stderr


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


def test_cannot_connect_exits_6() -> None:
    url = "nats://127.0.0.1:1"
    result = invoke(["--url", url, "req", "clitest.echo", "1"])
    assert result.exit_code == 6
    assert result.stderr.startswith(f"conat: error: cannot connect to {url}")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("url", ["foo://nowhere", "nats://h:99999", "localhost:4222", "nats://"])
def test_a_malformed_url_is_a_usage_error(url: str) -> None:
    for args in (["--url", url, "req", "clitest.echo", "1"], ["pub", "x", "1", "--url", url]):
        result = invoke(args)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(f"conat: error: cannot connect to {url}: ")
        assert result.stderr.endswith("(code 400)\n") and len(result.stderr.splitlines()) == 1


def test_conat_never_names_the_bench_package() -> None:
    """``conat bench`` is the bench package's plugin: no module of conat imports or names it."""
    root = Path(conat.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "bench" for a in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "bench", path
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value != "bench" and not node.value.startswith("bench."), path


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
        # the platform's part: master, a local host on its own bus, the admin's key, and a project
        # created, run and deleted through master
        "service  master at nats://127.0.0.1:",
        "host     local-1 ",
        f"admin    admin API key in {tmp_path / 'admin.key'} (0600)",
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
        "server", "service", "service", "host", "admin", "service", "request", "request", "request", "stream",
        "pubsub", "socket", "chunked", "project", "persist", "kv", "demo", "stopped",
    ]  # fmt: skip
    chunked, project, stored, kv = events[12:16]
    assert chunked["bytes"] == 8 * 1024 * 1024 and chunked["identical"] is True
    assert events[2]["name"] == "master" and project["stdout"] == "hello from a project\n"  # the platform
    assert events[3]["host_id"] == project["host_id"] and events[4]["key_file"] == str(tmp_path / "admin.key")
    assert (events[5]["name"], events[5]["subject"]) == ("persist", "persist.*.>")
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
