"""The packages form layers, and meet only at public seams.

``subjects ← conat ← actors ← persist ← {host, master}``, with ``bench`` on top: a package imports only
the packages below it. Whatever it takes from another package is public: no ``_private`` module, no
``_private`` name, and no call of another package's ``_private`` members (a method or attribute that only
another package defines). What a layer offers the layers above is in its ``__all__`` or in a documented
public submodule (``conat.cli.plugin``, ``conat.beneath``, ``conat.auth``, ``conat.testing``).

The check reads the source (AST), so it also covers modules nothing imports at test time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent

BELOW: Final[dict[str, frozenset[str]]] = {
    "subjects": frozenset(),
    "conat": frozenset({"subjects"}),
    "actors": frozenset({"subjects", "conat"}),
    "persist": frozenset({"subjects", "conat", "actors"}),
    "host": frozenset({"subjects", "conat", "actors", "persist"}),
    "master": frozenset({"subjects", "conat", "actors", "persist"}),
    "bench": frozenset({"subjects", "conat", "actors", "persist", "host", "master"}),
}
"""Each package and the packages it may import."""

PACKAGES: Final = frozenset(BELOW)


@dataclass(frozen=True, slots=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package_files(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _defined_private_names(package: str) -> set[str]:
    """Every ``_name`` a package defines: functions, classes, attributes (``self._x = …``), fields."""
    names: set[str] = set()
    for path in _package_files(package):
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return {n for n in names if _is_private(n)}


def _import_violations(package: str, path: Path, tree: ast.Module) -> Iterator[Violation]:
    rel = str(path.relative_to(ROOT))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [(node.module, [alias.name for alias in node.names])]
        else:
            continue
        for module, names in modules:
            parts = module.split(".")
            top = parts[0]
            if top not in PACKAGES or top == package:
                continue
            if top not in BELOW[package]:
                yield Violation(rel, node.lineno, f"{package} imports {module}: {top} is not below {package}")
            private = [p for p in parts[1:] if _is_private(p)] + [n for n in names if _is_private(n)]
            if private:
                yield Violation(rel, node.lineno, f"{package} imports private {module}: {', '.join(private)}")


def _string_imports(package: str, path: Path, tree: ast.Module) -> Iterator[Violation]:
    """``importlib.import_module("bench")`` and friends: imports by string obey the layers too."""
    rel = str(path.relative_to(ROOT))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        target = node.args[0].value
        if name in {"import_module", "__import__"} and isinstance(target, str):
            top = target.split(".")[0]
            if top in PACKAGES and top != package and top not in BELOW[package]:
                yield Violation(rel, node.lineno, f"{package} imports {target!r} by string")


def _private_member_violations(
    package: str, path: Path, tree: ast.Module, own: set[str], foreign: set[str]
) -> Iterator[Violation]:
    rel = str(path.relative_to(ROOT))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _is_private(node.attr)
            and node.attr in foreign
            and node.attr not in own
        ):
            yield Violation(rel, node.lineno, f"{package} uses another package's private member .{node.attr}")


def _violations() -> list[Violation]:
    private_by_package = {p: _defined_private_names(p) for p in PACKAGES if (ROOT / p).is_dir()}
    found: list[Violation] = []
    for package, own in private_by_package.items():
        foreign = set().union(*(names for p, names in private_by_package.items() if p != package))
        for path in _package_files(package):
            tree = _parse(path)
            found.extend(_import_violations(package, path, tree))
            found.extend(_string_imports(package, path, tree))
            found.extend(_private_member_violations(package, path, tree, own, foreign))
    return found


def test_every_top_level_package_is_placed() -> None:
    """A new top-level package must be given its place in the layers."""
    tops = {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and (p / "__init__.py").exists() and p.name not in {"tests", "build"}
    }
    assert tops <= PACKAGES, f"packages without a layer: {sorted(tops - PACKAGES)}"


def test_packages_meet_only_at_public_seams() -> None:
    found = _violations()
    assert not found, "layering violations:\n" + "\n".join(map(str, found))


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("actors", "from conat._service import Dispatcher\n", "private conat._service"),
        ("persist", "import conat._codecs\n", "private conat._codecs"),
        ("conat", "from actors import Actor\n", "not below conat"),
        ("subjects", "import conat\n", "not below subjects"),
        ("host", "from master import x\n", "not below host"),
        ("master", "from host import x\n", "not below master"),
        ("master", "import host._agent\n", "not below master"),
        ("persist", "from conat import _paths\n", "private conat: _paths"),
        ("conat", "importlib.import_module('bench')\n", "by string"),
    ],
)
def test_the_check_sees_each_kind_of_violation(package: str, source: str, expected: str) -> None:
    """The checker itself: each forbidden shape is reported (so a green run means something)."""
    tree = ast.parse(source)
    path = ROOT / package / "_example.py"
    found = [*_import_violations(package, path, tree), *_string_imports(package, path, tree)]
    assert any(expected in v.what for v in found), found


def test_the_check_sees_a_call_of_another_packages_private_member() -> None:
    tree = ast.parse("async def f(msg):\n    await msg.client._reply_busy(msg)\n")
    path = ROOT / "actors" / "_example.py"
    found = list(_private_member_violations("actors", path, tree, own=set(), foreign={"_reply_busy"}))
    assert found and "._reply_busy" in found[0].what
