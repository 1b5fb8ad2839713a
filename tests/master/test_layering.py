"""Layers meet at public seams: master and host never import each other (they share
``conat.platform``), ``conat.platform`` depends on nothing above conat, and the public surfaces
are sorted and complete."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import conat.platform
import master
from tests.test_exported_members import check_exports

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


def test_master_and_host_never_import_each_other() -> None:
    assert not {m for m in _imports("master") if m.split(".")[0] == "host"}
    assert not {m for m in _imports("host") if m.split(".")[0] == "master"}


def test_neither_imports_another_packages_private_modules() -> None:
    for package, others in (("master", ("conat", "actors", "auth", "persist", "subjects")),
                            ("host", ("conat", "actors", "auth", "persist", "subjects"))):  # fmt: skip
        private = {
            m for m in _imports(package)
            if m.split(".")[0] in others and any(part.startswith("_") for part in m.split(".")[1:])
        }  # fmt: skip
        assert not private, (package, sorted(private))


def test_the_platform_module_depends_on_nothing_above_conat() -> None:
    code = (
        "import sys, conat.platform; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('actors', 'auth', 'persist', 'host', 'master')]"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_master_all_sorted_and_complete() -> None:
    check_exports(master)


def test_platform_all_sorted_and_names_everything_it_defines() -> None:
    exported = list(conat.platform.__all__)
    assert exported == sorted(exported) and len(set(exported)) == len(exported)
    defined = {
        name for name, value in vars(conat.platform).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == "conat.platform"
    }  # fmt: skip
    assert defined <= set(exported), sorted(defined - set(exported))
    assert all(hasattr(conat.platform, name) for name in exported)
