"""The README's Layout section names only what exists, every page in docs/ is linked from the README,
no page links outside the repository, every relative link resolves, and docs/bench.md lists every row."""

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


# -- links: the documentation stands alone ----------------------------------------------------------

_PAGES: Final = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK: Final = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE: Final = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _links(page: Path) -> list[str]:
    """The link targets of a Markdown page, outside code blocks and code spans."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    return _LINK.findall(text)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to '-'."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 1
        while anchor in anchors:
            anchor, n = f"{slug}-{n}", n + 1
        anchors.add(anchor)
    return anchors


def test_no_page_links_outside_the_repository() -> None:
    for page in _PAGES:
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text, f"{page.name} points at ../shared, which a clone does not have"


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in _PAGES:
        links = _links(page)
        for link in links:
            if re.match(r"[a-z]+:", link):  # https:, mailto:
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.is_relative_to(ROOT) or not target.exists():
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such file in the repository)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such heading)")
    assert broken == []


def test_the_link_checks_see_links() -> None:
    readme_links = _links(ROOT / "README.md")
    assert "docs/design.md" in readme_links and "LICENSE" in readme_links
    assert "services-and-how-many-instances-each-may-run" in _anchors(ROOT / "docs" / "design.md")
    assert "discovery-srv" in _anchors(ROOT / "docs" / "actors.md")


def test_the_bench_page_lists_every_row() -> None:
    import bench  # the top layer: imported here only

    page = (ROOT / "docs" / "bench.md").read_text(encoding="utf-8")
    missing = [name for name in bench.BENCH_NAMES if f"| `{name}` |" not in page]
    assert missing == [], f"docs/bench.md does not describe the rows {missing}"
