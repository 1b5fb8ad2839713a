"""The error tree is drawn once (conat._errors' docstring) and the drawing is the truth.

Every ``ConatError`` subclass of every package is in the drawing, under its real parent, with its real
code, marked ``*`` exactly when it is registered for its wire code; a branch drawn "by reference"
(its subclasses listed in another module's docstring, like the credential errors) covers its
subclasses. No other module draws a tree.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

import conat
from conat import ConatError, _error_registry, _errors

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGES: Final = tuple(
    sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("tests", "bench"))
)
"""The project's packages (bench is left out: it raises only its own RuntimeErrors, none of the tree)."""
_NODE: Final = re.compile(
    r"^(?P<indent>[ │]*)(?P<branch>[├└]── )?(?P<name>[A-Z]\w+)\s+(?P<star>\* )?(?P<code>\S+)(?P<rest>.*)$"
)


@dataclass(frozen=True)
class Node:
    name: str
    parent: str | None
    code: str
    registered: bool
    by_reference: bool


def _drawing() -> dict[str, Node]:
    doc = _errors.__doc__ or ""
    lines = doc[doc.index("    ConatError") :].split("\n\n")[0].splitlines()
    nodes: dict[str, Node] = {}
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = _NODE.match(line[4:])
        if m is None:
            continue
        depth = len(m["indent"]) // 4 + (1 if m["branch"] else 0)
        stack = stack[:depth]
        parent = stack[-1][1] if stack else None
        description = " ".join([m["rest"], *(_continuation(lines, i))])
        nodes[m["name"]] = Node(m["name"], parent, m["code"], bool(m["star"]), "drawn in" in description)
        stack.append((depth, m["name"]))
    return nodes


def _continuation(lines: list[str], i: int) -> Iterator[str]:
    for line in lines[i + 1 :]:
        if _NODE.match(line[4:]):
            return
        yield line.strip(" │")


def _classes() -> Iterator[type[ConatError]]:
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    remote_variants = set(_error_registry._TYPED)
    todo = [ConatError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in remote_variants and sub.__module__.split(".")[0] in PACKAGES:
                todo.append(sub)
                yield sub


def _parent(cls: type) -> str:
    return next(b for b in cls.__bases__ if issubclass(b, ConatError)).__name__


def _drawn_code(cls: type[ConatError]) -> str:
    code = cls.__dict__.get("code", cls.code)
    return f'"{code}"' if isinstance(code, str) else str(code)


def test_every_error_is_drawn_under_its_parent_with_its_code() -> None:
    drawing = _drawing()
    assert drawing["ConatError"].parent is None
    elsewhere = {name for name, node in drawing.items() if node.by_reference}
    assert elsewhere == {"CredentialError", "AuthStoreError"}
    classes = list(_classes())  # imports every module: every registration has run
    registered = set(_error_registry._BY_CODE.values())
    seen = set()
    for cls in classes:
        if cls.__name__ not in drawing:
            assert any(issubclass(cls, c) for c in ConatError.__subclasses__() if c.__name__ in elsewhere), (
                f"{cls.__module__}.{cls.__qualname__} is not drawn in conat._errors' tree"
            )
            continue
        node = drawing[cls.__name__]
        seen.add(cls.__name__)
        assert node.parent == _parent(cls), f"{cls.__name__} is drawn under {node.parent}"
        if not node.code.startswith("<"):  # "<handler>", "<errno>": the code is per instance
            assert node.code == _drawn_code(cls), f"{cls.__name__}: drawn {node.code}, is {_drawn_code(cls)}"
        assert node.registered == (cls in registered), f"{cls.__name__}: '*' must mark registered classes"
    assert seen == set(drawing) - {"ConatError"}, f"drawn but gone: {set(drawing) - seen - {'ConatError'}}"


def test_no_other_module_draws_the_tree() -> None:
    """The credential branch alone is drawn again, by reference, in conat/auth/_errors.py (the one table of
    credential codes with what each means)."""
    names = "|".join(sorted({cls.__name__ for cls in _classes()} | {"InvalidSubject", "InvalidBus"}))
    branch = re.compile(rf"[├└]── (?:{names})\b")
    drawn = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if branch.search(path.read_text(encoding="utf-8"))
        and path != ROOT / "conat" / "_errors.py"
        and path != ROOT / "conat" / "auth" / "_errors.py"
    ]
    assert drawn == [], "the error tree is drawn once, in conat/_errors.py"


_STATUS_NAME: Final = r"_?[A-Z_]*(?:BUSY|STOPPING|UNAVAILABLE|INTERNAL|NOT_FOUND|BAD_REQUEST|CODE|STATUS)[A-Z_]*"


@pytest.mark.parametrize("name", ["BAD_REQUEST", "NOT_FOUND", "BUSY", "INTERNAL", "UNAVAILABLE"])
def test_status_codes_are_defined_once(name: str) -> None:
    value = getattr(conat, name)
    pattern = re.compile(rf"^{_STATUS_NAME}: Final = {value}$", re.MULTILINE)
    defined = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert defined == ["conat/_errors.py"], f"{value} is defined again in {defined}"
