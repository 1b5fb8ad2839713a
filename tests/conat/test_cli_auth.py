"""A bus with auth from the shell: ``conat auth keygen`` → ``conat server --auth`` → ``conat auth token``
→ ``conat --credentials FILE ...``, with real processes for the bus and its clients; and what a
wrong, expired or missing token gets (a 401 line and exit 6), what ``conat auth inspect`` says.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from conat.auth import Keyring, TokenIssuer, write_private_file
from subjects import Scope

from .cli_support import Proc, invoke, json_lines, procs

__all__ = ["procs"]  # a fixture: imported to be found, used by name

HOST = str(uuid.UUID(int=0xA1))
P = str(uuid.UUID(int=0xB1))
Q = str(uuid.UUID(int=0xB2))
ACCOUNT = f"account-{uuid.UUID(int=0xC1)}"


def _env(data: Path) -> dict[str, str]:
    return {"CONAT_DATA_DIR": str(data)}


def _conat(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m conat.cli ARGS`` in a process of its own, as a user would run it."""
    env = {k: v for k, v in os.environ.items() if k != "CONAT_URL"} | _env(data)
    argv = [sys.executable, "-m", "conat.cli", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def _ok(data: Path, *args: str) -> dict[str, Any]:
    """An in-process ``conat --json ARGS`` that must succeed: its one JSON result."""
    result = invoke(["--json", *args], env=_env(data))
    assert result.exit_code == 0, result.output
    [event] = json_lines(result.stdout)
    return event


def test_keygen_server_token_and_a_client_with_its_token_file(tmp_path: Path, procs: list[Proc]) -> None:
    keys = _ok(tmp_path, "auth", "keygen")
    assert keys["keys"] == str(tmp_path / "keys") and keys["kids"] == [keys["current"]]
    assert "seed" not in json.dumps(keys)
    again = invoke(["auth", "keygen"], env=_env(tmp_path))
    assert again.exit_code == 1 and "--rotate" in again.stderr  # never overwrites keys

    server = Proc(["--json", "server", "--auth", "--bus", f"host-{HOST}"], _env(tmp_path))
    procs.append(server)
    ready = json.loads(server.expect("stdout", '"event":"ready"'))
    assert ready["bus"] == f"host-{HOST}"

    admin = tmp_path / "admin.token"
    issued = _ok(tmp_path, "auth", "token", "hub", "-o", str(admin))  # the running bus's audience
    assert issued["bus"] == f"host-{HOST}" and issued["principal"] == "hub"
    assert stat.S_IMODE(admin.stat().st_mode) == 0o600
    assert admin.read_text().strip() not in json.dumps(issued)  # the token is in the file only

    account = tmp_path / "account.token"
    _ok(tmp_path, "auth", "token", ACCOUNT, "--project", P, "--ttl", "600", "-o", str(account))

    published = _conat(tmp_path, "--credentials", str(admin), "pub", "public.x", "hi")
    assert published.returncode == 0, published.stderr
    allowed = _conat(tmp_path, "--credentials", str(account), "pub", f"fs.project-{P}", "mine")
    assert allowed.returncode == 0, allowed.stderr
    forbidden = _conat(tmp_path, "--credentials", str(account), "pub", f"fs.project-{Q}", "not mine")
    assert forbidden.returncode == 5, forbidden.stderr

    status = _ok(tmp_path, "status")
    assert status["bus"] == f"host-{HOST}"
    assert invoke(["down"], env=_env(tmp_path)).exit_code == 0
    code, _, err = server.finish()
    assert code == 0, err
    assert not (tmp_path / "server.json").exists()


def test_refused_tokens_get_a_401_line_and_exit_6(tmp_path: Path, procs: list[Proc]) -> None:
    _ok(tmp_path, "auth", "keygen")
    server = Proc(["--json", "server", "--auth"], _env(tmp_path))  # the master bus
    procs.append(server)
    server.expect("stdout", '"event":"ready"')
    issuer = TokenIssuer(Keyring.open(tmp_path / "keys"))
    expired = tmp_path / "expired.token"
    write_private_file(expired, issuer.issue("hub", "master", Scope(), 60, now=time.time() - 7200).encode())
    foreign = tmp_path / "foreign.token"
    stranger = TokenIssuer(Keyring.open(tmp_path / "other-keys"))
    write_private_file(foreign, stranger.issue("hub", "master", Scope(), 600).encode())
    wrong_bus = tmp_path / "wrong-bus.token"
    _ok(tmp_path, "auth", "token", "hub", "--bus", f"host-{HOST}", "-o", str(wrong_bus))

    cases = {
        "expired": ["--credentials", str(expired)],
        "refused": ["--credentials", str(foreign)],
        "wrong-bus": ["--credentials", str(wrong_bus)],
        "no-credentials": [],
    }
    for refusal, credentials in cases.items():
        # a client process of its own for the first case; in-process for the others (same code path)
        if refusal == "expired":
            done = _conat(tmp_path, *credentials, "pub", "public.x", "hi")
            code, stderr = done.returncode, done.stderr
        else:
            result = invoke([*credentials, "pub", "public.x", "hi"], env=_env(tmp_path))
            code, stderr = result.exit_code, result.stderr
        assert code == 6, (refusal, stderr)
        [line] = stderr.splitlines()
        assert line.startswith("conat: error: cannot connect") and line.endswith(f"(code 401: {refusal})")
        assert ("--credentials FILE" in line) == (refusal == "no-credentials")

    loose = tmp_path / "loose.token"
    loose.write_text((tmp_path / "wrong-bus.token").read_text())
    loose.chmod(0o644)
    result = invoke(["--credentials", str(loose), "pub", "public.x", "hi"], env=_env(tmp_path))
    assert result.exit_code == 1 and "accessible by group or others" in result.stderr  # never sent


def test_inspect_shows_the_claims_and_checks_them(tmp_path: Path) -> None:
    _ok(tmp_path, "auth", "keygen", "--export", str(tmp_path / "public.json"))
    good = tmp_path / "good.token"
    _ok(tmp_path, "auth", "token", ACCOUNT, "--bus", f"host-{HOST}", "--project", P, "-o", str(good))
    shown = _ok(tmp_path, "auth", "inspect", str(good))
    assert (shown["principal"], shown["bus"], shown["valid"]) == (ACCOUNT, f"host-{HOST}", True)
    assert shown["scope"]["projects"] == [P]
    pinned = _ok(tmp_path, "auth", "inspect", str(good), "--public-keys", str(tmp_path / "public.json"))
    assert pinned["valid"] is True
    human = invoke(["auth", "inspect", str(good)], env=_env(tmp_path))
    assert f"{ACCOUNT} on bus host-{HOST}" in human.stdout and "valid" in human.stdout

    issuer = TokenIssuer(Keyring.open(tmp_path / "keys"))
    expired = tmp_path / "expired.token"
    write_private_file(expired, issuer.issue("hub", "master", Scope(), 60, now=time.time() - 7200).encode())
    result = invoke(["--json", "auth", "inspect", str(expired)], env=_env(tmp_path))
    assert result.exit_code == 1
    [event] = json_lines(result.stdout)
    assert (event["valid"], event["refusal"]) == (False, "expired")
    assert "(code expired)" in result.stderr

    elsewhere = tmp_path / "no-keys-here"
    unverified = _ok(elsewhere, "auth", "inspect", str(good))
    assert unverified["valid"] is None  # no keys to check it with: said, not guessed


def test_token_needs_a_bus_and_keys(tmp_path: Path) -> None:
    no_bus = invoke(["auth", "token", "hub", "-o", str(tmp_path / "t")], env=_env(tmp_path))
    assert no_bus.exit_code == 1 and "conat server --auth" in no_bus.stderr
    no_keys = invoke(["auth", "token", "hub", "--bus", "master", "-o", str(tmp_path / "t")], env=_env(tmp_path))
    assert no_keys.exit_code == 1 and "conat auth keygen" in no_keys.stderr
    _ok(tmp_path, "auth", "keygen")
    bad = invoke(["auth", "token", "nobody", "--bus", "master", "-o", str(tmp_path / "t")], env=_env(tmp_path))
    assert bad.exit_code == 1 and "not a principal" in bad.stderr
    assert not (tmp_path / "t").exists()
    printed = invoke(["auth", "token", "hub", "--bus", "master", "-o", "-"], env=_env(tmp_path))
    assert printed.exit_code == 0 and printed.stdout.startswith("conat1.")


@pytest.mark.parametrize("args", [["--keys", "k"], ["--bus", "master"], ["--public-keys", "f"]])
def test_auth_options_of_server_need_auth(args: list[str], tmp_path: Path) -> None:
    result = invoke(["server", *args], env=_env(tmp_path))
    assert result.exit_code == 1 and "go with --auth" in result.stderr
