"""persist._inventory: a scope's stream names, walked in bounded memory, on a real directory tree."""

from __future__ import annotations

import os
from pathlib import Path

from persist._inventory import names_page


def test_names_page_keeps_only_a_page_in_order(tmp_path: Path) -> None:
    names = [f"s{i:04}" for i in range(2500)] + [f"logs/{i}" for i in range(30)] + ["a/b/c"]
    for name in names:
        file = tmp_path / f"{name}.db"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.touch()
    (tmp_path / "gone.db.quarantined").touch()  # a quarantined stream: listed by its marker
    (tmp_path / "s0001.db.quarantined").touch()  # ... once, even with a file at its name again
    (tmp_path / "s0002.db-wal").touch()
    (tmp_path / ".db").touch()
    (tmp_path / "link.db").symlink_to(tmp_path / "s0000.db")  # never followed, nor listed
    os.symlink(tmp_path / "logs", tmp_path / "linked-dir")
    every = sorted({*names, "gone"})
    assert names_page(tmp_path, "", None, 10_000) == every
    assert names_page(tmp_path, "", None, 7) == every[:7]
    assert names_page(tmp_path, "s", "s0998", 3) == ["s0999", "s1000", "s1001"]
    assert names_page(tmp_path, "logs/", None, 100) == sorted(n for n in names if n.startswith("logs/"))
    assert names_page(tmp_path / "missing", "", None, 10) == []
