"""The README's architecture table names every module of the package, and only files that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def table_paths() -> set[str]:
    """Paths in the first column of the table; `a/b.py`, `c.py` in one cell means a/b.py and a/c.py."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| module | holds |"):]
    table = table[:table.index("\n\n")]
    paths: set[str] = set()
    for row in table.splitlines()[2:]:
        folder = ""
        for token in re.findall(r"`([^`]+)`", row.split("|")[1]):
            if "/" in token:
                folder = token.rsplit("/", 1)[0] if not token.endswith("/") else token.rstrip("/")
                paths.add(token.rstrip("/"))
            elif token.endswith(".py"):
                paths.add(f"{folder}/{token}" if folder else token)
    return paths


def test_every_module_outside_the_lab_has_a_row():
    modules = {str(p.relative_to(REPO)) for p in (REPO / "elastic").rglob("*.py")
               if p.name != "__init__.py" and "lab" not in p.relative_to(REPO).parts}
    covered = table_paths()
    assert sorted(modules - covered) == []


def test_every_path_in_the_table_exists():
    assert sorted(p for p in table_paths() if not (REPO / p).exists()) == []
