"""The bus's security has one home, ``conat.auth``: an application's own ``auth`` module cannot
shadow it, its loggers are named for its modules, and its errors and codes are declared once."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import conat.auth
from conat.auth import _errors

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "conat" / "auth"


def test_an_applications_own_auth_module_does_not_shadow_conat(tmp_path: Path) -> None:
    """``auth.py`` beside a script comes first on ``sys.path``: nothing of conat (nor the host,
    which starts a bus with auth) may import a top-level ``auth``."""
    (tmp_path / "auth.py").write_text('raise RuntimeError("the application\'s own auth.py was imported")\n')
    (tmp_path / "main.py").write_text(
        "import conat\n"
        "import conat.cli\n"
        "import host\n"
        "from conat.auth import AuthBus, Keyring, TokenIssuer\n"
        "print(AuthBus.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "conat.auth._bus"


def test_importing_conat_does_not_load_the_bus_side(tmp_path: Path) -> None:
    """The credentials load with ``conat`` (the client reads tokens with them); the bus side (it
    uses the client) loads on first use, so ``import conat`` never needs a half-built client."""
    code = (
        "import sys, conat\n"
        "assert 'conat.auth._tokens' in sys.modules\n"
        "assert 'conat.auth._bus' not in sys.modules\n"
        "from conat.auth import AuthResponder\n"
        "assert 'conat.auth._bus' not in sys.modules and 'conat.auth._responder' in sys.modules\n"
        "import conat.auth\n"
        "assert 'AuthBus' in dir(conat.auth)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def _logger_names(path: Path) -> list[str]:
    return [
        str(node.args[0].value)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "getLogger"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]


def test_every_logger_is_named_for_its_module() -> None:
    """``conat/auth/_callout.py`` logs as ``conat.auth.callout``: an operator's logging config for
    ``conat.auth`` covers the whole of the bus's security, and nothing else."""
    found = {}
    for path in sorted(PACKAGE.glob("_*.py")):
        for name in _logger_names(path):
            found[path.name] = name
            assert name == f"conat.auth.{path.stem.lstrip('_')}", path.name
    assert {"_bus.py", "_callout.py", "_responder.py", "_audit.py", "_store.py", "_keyring.py"} <= set(found)


def test_every_error_code_is_in_the_one_table() -> None:
    """Each error class's codes (its ``code`` annotation) appear in :mod:`conat.auth._errors`'s
    table, so a code has one documented meaning wherever it is raised."""
    doc = _errors.__doc__ or ""
    table = {line.split()[0].strip("`") for line in doc.splitlines() if line.startswith("``")}
    classes = [getattr(conat.auth, name) for name in conat.auth.__all__ if name.endswith("Error")]
    codes: set[str] = set()
    for cls in classes:
        hint = typing.get_type_hints(cls).get("code")
        codes |= set(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else {cls.code}
    codes.discard("credential")
    assert codes - table == set()
    assert table - codes == set()
