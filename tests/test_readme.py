"""The README does what it says: its examples run, its commands exist, its facts match the project.

**Python examples.** The README says each example is a complete script, run while ``conat up`` runs
in another terminal. So this module starts ``conat up`` (a real one, in a private data directory)
and runs every ```python block as a script with the test environment's Python, in a fresh
directory, with nothing but ``$CONAT_DATA_DIR`` to find the bus (as a user's script finds it). A
block passes when it exits 0; every line ending with ``# prints: <text>`` must be matched, in order,
by a line of its output containing that text, so the output the README shows cannot rot either.

**Shell commands.** Every ``conat ...`` command shown in the README and in ``docs/`` (shell blocks
and inline code) must name a command that exists, with options it has: each is resolved in the real
click tree, and its ``--help`` runs.

**Facts.** The version shown is pyproject's and the changelog's; the README's test command is the
one CI runs; the README stays short.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import click
import pytest
from click.testing import CliRunner

from conat.cli import cli

ROOT: Final = Path(__file__).resolve().parent.parent
README: Final = ROOT / "README.md"
_BLOCK: Final = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_PRINTS: Final = re.compile(r"#\s*prints:\s*(.+?)\s*$", re.MULTILINE)
_SCRIPT_TIMEOUT: Final = 120.0
_UP_TIMEOUT: Final = 120.0
_MAX_README_CHARS: Final = 15_000


def _blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """The fenced blocks of ``language`` in ``path``: (line of the fence, code)."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(2))
        for m in _BLOCK.finditer(text)
        if m.group(1) == language
    ]


PYTHON_BLOCKS: Final = _blocks(README, "python")


# -- the Python examples, against a real `conat up` -----------------------------------------------


@pytest.fixture(scope="module")
def conat_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running ``conat up`` in a private data directory (returned), once its demo has succeeded."""
    data = tmp_path_factory.mktemp("conat-up")
    log = data.parent / f"{data.name}-up.log"
    env = {key: value for key, value in os.environ.items() if key not in ("CONAT_URL", "CONAT_CREDENTIALS")}
    env["CONAT_DATA_DIR"] = str(data)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conat.cli", "up", "--json"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data,
        )
    try:
        deadline = time.monotonic() + _UP_TIMEOUT
        while True:
            events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            demo = [event for event in events if event.get("event") == "demo"]
            if demo:
                assert demo[0].get("ok") is True, f"conat up's demo failed:\n{log.read_text()}"
                break
            assert proc.poll() is None, f"conat up exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"conat up not ready in {_UP_TIMEOUT}s:\n{log.read_text()}"
            time.sleep(0.1)
        yield data
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, f"conat up stopped with exit code {code}:\n{log.read_text()}"


def _unmatched(expected: list[str], output: str) -> str | None:
    """The first expected text no later output line contains (each line matches one expectation)."""
    lines = iter(output.splitlines())
    for text in expected:
        if not any(text in line for line in lines):
            return text
    return None


def test_the_readme_has_examples_that_show_their_output() -> None:
    assert len(PYTHON_BLOCKS) >= 7
    silent = [line for line, code in PYTHON_BLOCKS if not _PRINTS.search(code)]
    assert silent == [], f"README examples with no `# prints:` line to check (lines {silent})"


def test_matching_prints_in_order() -> None:
    assert _unmatched(["a", "b"], "xa\nxb\n") is None
    assert _unmatched(["b", "a"], "a\nb\n") == "a"
    assert _unmatched(["a", "a"], "a\n") == "a"


@pytest.mark.timeout(_SCRIPT_TIMEOUT + _UP_TIMEOUT + 60)
@pytest.mark.parametrize(
    ("line", "code"), PYTHON_BLOCKS, ids=[f"README.md:{line}" for line, _ in PYTHON_BLOCKS]
)
def test_readme_example_runs(line: int, code: str, conat_up: Path, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key not in ("CONAT_URL", "CONAT_CREDENTIALS")}
    env["CONAT_DATA_DIR"] = str(conat_up)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=_SCRIPT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"README.md:{line} failed:\n{done.stdout}\n{done.stderr}"
    missing = _unmatched(_PRINTS.findall(code), done.stdout)
    assert missing is None, f"README.md:{line}: {missing!r} not printed (in order):\n{done.stdout}"


# -- the shell commands shown exist ---------------------------------------------------------------

_PAGES: Final = [README, *sorted((ROOT / "docs").glob("*.md"))]
_INLINE: Final = re.compile(r"(?<!`)`(conat [^`]+)`(?!`)")
_GLOBAL_WITH_VALUE: Final = frozenset({"--url", "--credentials", "--log-level"})


def _shown_commands() -> list[tuple[str, str]]:
    """Every ``conat ...`` command line shown: (where, command text without comments)."""
    shown: list[tuple[str, str]] = []
    for page in _PAGES:
        name = page.relative_to(ROOT).as_posix()
        text = page.read_text(encoding="utf-8")
        for line, code in _blocks(page, "sh"):
            for offset, command in enumerate(code.splitlines()):
                command = command.split(" #", 1)[0].strip()
                if command.startswith("conat "):
                    shown.append((f"{name}:{line + 1 + offset}", command))
        shown.extend(
            (f"{name}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1)) for m in _INLINE.finditer(text)
        )
    return [(where, command) for where, command in shown if command != "conat ..."]  # "any command"


SHOWN: Final = _shown_commands()


def _resolve(words: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """Walk the click tree along ``words``: (command path, the command, the words left)."""
    command: click.Command = cli
    path: list[str] = []
    words = list(words)
    while words and isinstance(command, click.Group):
        word = words[0]
        if word.startswith("-") and command is not cli and command.invoke_without_command:
            break  # the options of a group that runs by itself too (`conat bench --quick`)
        if word.startswith("-"):  # a global option before the command, with its value if it takes one
            words = words[2:] if word in _GLOBAL_WITH_VALUE else words[1:]
            continue
        sub = command.get_command(click.Context(command), word)
        if sub is None:
            break
        command, path, words = sub, [*path, word], words[1:]
    return path, command, words


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def test_commands_are_found() -> None:
    assert len(SHOWN) > 20
    assert any(where.startswith("README.md:") for where, _ in SHOWN)


@pytest.mark.parametrize(("where", "command"), SHOWN, ids=[where for where, _ in SHOWN])
def test_shown_command_exists(where: str, command: str) -> None:
    words = command.replace("\\|", "|").split()[1:]
    path, resolved, rest = _resolve(words)
    shown_options = {m.group(0) for m in re.finditer(r"(?<![\w-])--?[a-zA-Z][\w-]*", " ".join(words))}
    assert path or (rest == [] and shown_options), f"{where}: `{command}` names no conat command"
    runs_alone = isinstance(resolved, click.Group) and resolved.invoke_without_command
    if runs_alone and rest and rest[0].startswith(("-", "[", ">")):
        rest = []  # `conat bench [--quick]`: the group itself, with its options
    if isinstance(resolved, click.Group) and rest:  # a group shown with a placeholder (`conat fs ls|cat`)
        assert "|" in rest[0] or rest[0].isupper() or rest[0] == "...", (
            f"{where}: `{command}`: {rest[0]!r} is not a command of `conat {' '.join(path)}`"
        )
    known = _options(resolved) | _options(cli) | {"-h", "--help"}
    unknown = sorted(shown_options - known)
    assert unknown == [], f"{where}: `{command}`: `conat {' '.join(path)}` has no option {unknown}"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, f"{where}: `conat {' '.join(path)} --help` failed:\n{result.output}"


def test_a_misspelt_command_is_caught() -> None:
    assert _resolve(["strem", "ls"])[0] == []
    path, command, rest = _resolve(["--json", "stream", "ls", "hub"])
    assert path == ["stream", "ls"] and rest == ["hub"]
    assert "--prefix" in _options(command) and "--prefx" not in _options(command)


# -- facts --------------------------------------------------------------------------------------


def _version() -> str:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert isinstance(version, str)
    return version


def test_the_readme_shows_the_version_and_the_changelog_has_it() -> None:
    version = _version()
    readme = README.read_text(encoding="utf-8")
    assert re.findall(r"^Version (\S+) ", readme, re.MULTILINE) == [version]
    assert f"conat-{version}-py3-none-any.whl" in readme
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[([^\]]+)\]", changelog, re.MULTILINE)
    assert releases[:2] == ["Unreleased", version], f"CHANGELOG.md: Unreleased, then {version} first"


def test_the_readme_test_command_is_what_ci_runs() -> None:
    (two_commands,) = [code for _, code in _blocks(README, "sh") if "conat up" in code and "pytest" in code]
    (test_command,) = [
        line.split("#", 1)[0].strip() for line in two_commands.splitlines() if "pytest" in line
    ]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command == "python -m pytest"
    assert test_command in ci, f".ci/run does not run the README's test command `{test_command}`"


def test_the_license_is_the_one_pyproject_names() -> None:
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "MIT"}


def test_the_readme_stays_a_guide() -> None:
    size = len(README.read_text(encoding="utf-8"))
    assert size < _MAX_README_CHARS, f"README.md has {size} characters: move depth to docs/"
