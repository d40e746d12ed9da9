"""The layers: ``cascade/`` (the core) imports nothing above it; ``engines/`` and ``train/`` never import the dashboard.

Walks every import statement of every module (top level and inside functions, since a lazy import is still an edge).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "cascade": {"engines", "train", "dashboard"},
    "engines": {"train", "dashboard"},
    "train": {"dashboard"},
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def upward_edges(package: str) -> list[str]:
    bad = FORBIDDEN[package]
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in sorted(imported_packages(path))
        if name in bad
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    assert upward_edges(package) == []


def test_the_walk_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from engines.select import open_cascade\n    import dashboard.state\n")
    assert imported_packages(module) == {(2, "engines"), (3, "dashboard")}
