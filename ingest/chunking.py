"""Markdown -> chunks that follow its structure: heading paths, whole tables and diagrams, token-sized text.

Tables and diagrams are also indexed the way people ask about them: each table row, and each diagram group, is a
chunk of its own beside the whole (appended after the document's other chunks, so their ids keep their places).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from .mermaid import render_edges, render_groups
from .structure import is_tree, table_rows, tree_lines

CountTokens = Callable[[str], int]


@dataclass
class Chunk:
    text: str  # what is stored, shown to the model and returned as a source
    section: str  # heading path joined with " > ", "" when none
    unit: str = "text"  # text | table | diagram | code | table-row | group (the last two repeat part of a whole)
    embed_texts: list[str] = field(default_factory=list)  # what is embedded (averaged) when not the text itself


@dataclass
class _Block:
    kind: str  # para | table | mermaid | code
    text: str


def _blocks(lines: list[str]) -> list[_Block]:
    """Group a section's lines into paragraphs, tables and fenced blocks."""
    out: list[_Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*(```+|~~~+)\s*(\w*)", line)
        if fence:
            marker, lang = fence.group(1), fence.group(2).lower()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(marker):
                j += 1
            body = "\n".join(lines[i : j + 1])
            out.append(_Block("mermaid" if lang == "mermaid" else "code", body))
            i = j + 1
            continue
        if line.lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_Block("table", "\n".join(lines[i:j])))
            i = j
            continue
        if not line.strip() or re.match(r"^\s*([-*_])(\s*\1){2,}\s*$", line):
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].strip() and not lines[j].lstrip().startswith(("|", "```", "~~~")):
            j += 1
        out.extend(_Block("para", para) for para in _unquote(lines[i:j]))
        i = j
    return out


def _unquote(lines: list[str]) -> list[str]:
    """A paragraph's text; a blockquote's paragraphs without their '>' markers, which a quote would otherwise keep, and
    with their lines joined, as Markdown reads them: a verse's line is not a sentence.

    Example: ['> A is', '> x.', '>', '> B is y.'] -> ['A is x.', 'B is y.']; ['plain'] -> ['plain'].
    """
    if not all(line.lstrip().startswith(">") for line in lines):
        return ["\n".join(lines)]
    paras: list[list[str]] = [[]]
    for line in lines:
        text = re.sub(r"^\s*>\s?", "", line).rstrip()
        if text.strip():
            paras[-1].append(text)
        elif paras[-1]:
            paras.append([])
    return [" ".join(p) for p in paras if p]


def sections(markdown: str) -> list[tuple[str, list[str]]]:
    """Split Markdown on headings. Example: '# A\\nx\\n## B\\ny' -> [('A', ['x']), ('A > B', ['y'])]."""
    path: list[tuple[int, str]] = []
    out: list[tuple[str, list[str]]] = [("", [])]
    in_fence = False
    for line in markdown.splitlines():
        if re.match(r"^\s*(```|~~~)", line):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"^(#{1,6})\s+(.+?)\s*#*\s*$", line)
        if m:
            level, title = len(m.group(1)), m.group(2).strip()
            path = [p for p in path if p[0] < level] + [(level, title)]
            out.append((" > ".join(t for _, t in path), []))
        else:
            out[-1][1].append(line)
    return [(s, lines) for s, lines in out if any(l.strip() for l in lines) or s]


def _split_sentences(text: str) -> list[str]:
    """Example: 'One. Two? Three' -> ['One.', 'Two?', 'Three']."""
    parts = re.split(r"(?<=[.!?…])\s+(?=[\"'«(\[A-ZА-ЯЁ0-9*_-])|\n+", text)
    return [p.strip() for p in parts if p and p.strip()]


def _split_words(text: str, limit: int, count: CountTokens) -> list[str]:
    words, out, cur = text.split(), [], []
    for w in words:
        if cur and count(" ".join(cur + [w])) > limit:
            out.append(" ".join(cur))
            cur = []
        cur.append(w)
    if cur:
        out.append(" ".join(cur))
    return out


def _pack(pieces: list[str], limit: int, overlap: int, count: CountTokens) -> list[str]:
    """Pack sentences into chunks of at most `limit` tokens, repeating about `overlap` tokens of tail."""
    units: list[str] = []
    for p in pieces:
        units.extend(_split_words(p, limit, count) if count(p) > limit else [p])
    chunks, cur = [], []
    for u in units:
        if cur and count(" ".join(cur + [u])) > limit:
            chunks.append(" ".join(cur))
            tail: list[str] = []
            for prev in reversed(cur):
                if count(" ".join([prev] + tail)) > overlap:
                    break
                tail.insert(0, prev)
            cur = tail if count(" ".join(tail + [u])) <= limit else []
        cur.append(u)
    if cur:
        chunks.append(" ".join(cur))
    return chunks


def _table_chunks(table: str, limit: int, count: CountTokens) -> list[str]:
    """A table whole when it fits, else groups of rows each under the repeated header row."""
    rows = table.splitlines()
    if count(table) <= limit or len(rows) <= 3:
        return [table]
    header = rows[:2] if len(rows) > 1 and re.match(r"^\s*\|[\s:|-]+\|\s*$", rows[1]) else rows[:1]
    out, cur = [], []
    for row in rows[len(header):]:
        if cur and count("\n".join(header + cur + [row])) > limit:
            out.append("\n".join(header + cur))
            cur = []
        cur.append(row)
    if cur:
        out.append("\n".join(header + cur))
    return out


def chunk_markdown(
    markdown: str, count: CountTokens, chunk_tokens: int = 200, overlap: int = 32, embed_tokens: int = 220
) -> list[Chunk]:
    """Structure-aware chunks of a Markdown document (see the module docstring).

    A chunk longer than `embed_tokens` (what the embedder reads) is embedded as the mean of its windows.
    """
    chunks: list[Chunk] = []
    parts: list[Chunk] = []  # rows and groups, each beside its whole table or diagram
    for section, lines in sections(markdown):
        pending: list[str] = []

        def flush() -> None:
            if pending:
                for text in _pack(pending, chunk_tokens, overlap, count):
                    windows = _pack(_split_sentences(text), embed_tokens, 0, count) if count(text) > embed_tokens else []
                    chunks.append(Chunk(text, section, "text", windows))
                pending.clear()

        for block in _blocks(lines):
            if block.kind == "para":
                pending.extend(_split_sentences(block.text) if count(block.text) > chunk_tokens else [block.text])
                continue
            flush()
            if block.kind == "table":
                chunks.extend(Chunk(t, section, "table") for t in _table_chunks(block.text, chunk_tokens, count))
                parts.extend(Chunk(row, section, "table-row") for row in table_rows(block.text))
            elif block.kind == "mermaid":
                sentences = render_edges(block.text)
                text = block.text + ("\n\n" + "\n".join(sentences) if sentences else "")
                groups = _pack(sentences, chunk_tokens, 0, count) if sentences else [block.text]
                chunks.append(Chunk(text, section, "diagram", groups))
                parts.extend(Chunk(line, section, "group") for line in render_groups(block.text))
            elif is_tree(block.text):
                # Read through its lines, never its glyphs: a quote of '├─ LoRA' says nothing.
                chunks.append(Chunk("\n".join(tree_lines(block.text)), section, "diagram"))
            else:
                embed = [] if count(block.text) <= chunk_tokens else _pack(block.text.splitlines(), chunk_tokens, 0, count)
                chunks.append(Chunk(block.text, section, "code", embed))
        flush()
    return chunks + parts
