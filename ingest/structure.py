"""Tables and text trees -> the lines people ask by: one labelled line per table row, one line per tree group."""

from __future__ import annotations

import re

from .mermaid import strip_emoji

_SEPARATOR = re.compile(r"^\s*\|[\s:|-]+\|\s*$")
_BRANCH = re.compile(r"^(\s*)(?:[├└│|]\s*)?[├└]─+\s*(.+?)\s*$")  # '     ├─ LoRA / QLoRA'
_ARROW = re.compile(r"^\s*[↓⬇v|]\s*$")


def _cells(row: str) -> list[str]:
    """Example: '| **LoRA** | low-rank |' -> ['LoRA', 'low-rank']."""
    inner = row.strip().strip("|")
    return [re.sub(r"\s+", " ", strip_emoji(re.sub(r"[*_`]+", "", c))).strip() for c in inner.split("|")]


def table_rows(table: str) -> list[str]:
    """Each body row as one line, every cell under its column name, so a row is found by any of its cells.

    Example: '| Method | Tool |\\n|---|---|\\n| **LoRA** | PEFT |' -> ['Method: LoRA; Tool: PEFT.'].
    """
    rows = [r for r in table.splitlines() if r.strip()]
    if len(rows) < 3 or not _SEPARATOR.match(rows[1]):
        return []
    header = _cells(rows[0])
    out = []
    for row in rows[2:]:
        cells = _cells(row)
        pairs = [f"{h}: {c}" if h else c for h, c in zip(header, cells) if c]
        if pairs:
            out.append("; ".join(pairs).rstrip(".") + ".")
    return out


def is_tree(block: str) -> bool:
    """A text tree drawn with box glyphs. Example: 'PEFT\\n ├─ LoRA' -> True."""
    return any(_BRANCH.match(line) for line in block.splitlines())


def tree_lines(block: str) -> list[str]:
    """A glyph tree as plain lines: the top-level steps in order, then each group with its members.

    Example: 'Full FT\\n  ↓\\nPEFT\\n  ├─ LoRA\\n  ├─ BitFit' -> ['Full FT → PEFT.', 'PEFT: LoRA, BitFit.'].
    """
    steps: list[str] = []
    groups: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []  # (indent, label) of the open groups
    for raw in block.splitlines():
        if raw.strip().startswith(("```", "~~~")) or not raw.strip() or _ARROW.match(raw):
            continue
        branch = _BRANCH.match(raw)
        if branch:
            indent, label = len(branch.group(1)), strip_emoji(branch.group(2)).strip()
            while len(stack) > 1 and stack[-1][0] >= indent:
                stack.pop()
            if stack:
                groups.setdefault(stack[-1][1], []).append(label)
            stack.append((indent + 1, label))
            continue
        label = strip_emoji(raw).strip()
        stack = [(0, label)]
        steps.append(label)
    out = [" → ".join(steps) + "."] if len(steps) > 1 else []
    return out + [f"{group}: {', '.join(members)}." for group, members in groups.items()]
