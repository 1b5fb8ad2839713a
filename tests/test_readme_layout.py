"""The README's Layout section names only what exists, and every page in docs/ is linked from the README."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent


def _layout() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Layout\n") :]
    following = section.find("\n## ", 1)
    return section if following < 0 else section[:following]


def test_every_path_in_the_layout_exists() -> None:
    named = [
        path
        for cell in re.findall(r"^\| ([^|]+) \|", _layout(), re.MULTILINE)
        for path in re.findall(r"`([\w./]+)`", cell)
    ]
    assert len(named) > 10, "the layout table was not found"
    missing = [path for path in named if not (ROOT / path).exists()]
    assert missing == [], f"the README's layout names what does not exist: {missing}"


def test_every_doc_page_is_reachable_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"(docs/{p.name})" not in readme]
    assert unlinked == [], f"docs pages the README does not link: {unlinked}"
