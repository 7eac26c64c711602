"""The rooms' arrows point one way (STYLE.md): serving never imports training code, nothing imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("ingest", "serve", "finetune", "evals")
# What each room may import of the others. finetune -> serve: the same prompt format and the one adapter check.
ALLOWED = {"ingest": set(), "serve": {"ingest"}, "finetune": {"ingest", "serve"}, "evals": {"ingest", "serve"}}


def imported_rooms(path: Path) -> set[str]:
    """The top-level project packages a module imports anywhere in it (lazy imports inside functions too).

    Example: 'from finetune import x' inside a function -> {'finetune'}; 'from .adapter import y' -> set().
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
    return found & (set(ROOMS) | {"ftatlas"})


@pytest.mark.parametrize("room", ROOMS)
def test_rooms_import_only_downstream(room):
    wrong = {}
    for path in sorted((ROOT / room).rglob("*.py")):
        bad = imported_rooms(path) - ALLOWED[room] - {room}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"{room} imports rooms it must not: {wrong}"


def test_the_check_sees_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from finetune import validate_adapter\n    import ftatlas.cli\n", encoding="utf-8")
    assert imported_rooms(module) == {"finetune", "ftatlas"}
