"""The atlas's decision chart -> a checked graph of yes/no questions and method leaves, found by its structure."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import IngestError
from .mermaid import Flowchart, parse_flowchart, render

ANSWERS = {"да": "yes", "нет": "no", "yes": "yes", "no": "no"}  # edge labels a decision may carry
_FENCE = re.compile(r"^```+\s*mermaid\s*$(.*?)^```+\s*$", re.M | re.S | re.I)
_WORD = re.compile(r"[0-9A-Za-zА-Яа-яЁё][\w-]*")


class ChartError(IngestError):
    """A decision chart is malformed; the message names the node."""

    def __init__(self, node: str, reason: str):
        super().__init__(f"decision chart: node {node}: {reason}")
        self.node = node


@dataclass
class Method:
    """One row of the atlas's method table that a leaf names, and the card documents of that family."""

    row: str  # the table's first cell, e.g. 'LoRA / QLoRA'
    names: list[str]  # the leaf's own words for it, e.g. ['LoRA', 'QLoRA'] or ['Adapters']
    cards: list[str] = field(default_factory=list)  # manifest ids whose family is this row


@dataclass
class DecisionMap:
    """The graph the advisor walks; plain data, saved as JSON at ingest."""

    doc_id: str
    start: str  # the first question
    nodes: dict[str, dict]  # id -> {kind: decision|leaf|start, label (raw, <br> kept), text (prose)}
    answers: dict[str, dict[str, str]]  # decision id -> {yes: id, no: id}
    next_steps: dict[str, list[str]]  # leaf id -> leaves it joins (the hybrid step)
    methods: dict[str, list[Method]]  # leaf id -> methods named by its label
    mermaid: str  # the chart's source, for drawing it

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "DecisionMap":
        d = json.loads(text)
        d["methods"] = {k: [Method(**m) for m in v] for k, v in d["methods"].items()}
        return cls(**d)

    def leaves(self) -> list[str]:
        return [n for n, v in self.nodes.items() if v["kind"] == "leaf"]


def is_decision_chart(chart: Flowchart) -> bool:
    """A chart is a decision chart when some {decision} node has an edge labelled Да/Нет (or yes/no)."""
    return any(chart.labels.get(a, ("", False))[1] and t.lower() in ANSWERS for a, t, _ in chart.edges)


def table_rows(markdown: str) -> list[str]:
    """First cells of the document's Markdown tables (header rows skipped).

    Example: '| Категория | Суть |\\n|---|---|\\n| **BitFit** | bias |' -> ['BitFit']
    """
    rows, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if not cells or re.fullmatch(r":?-{2,}:?", cells[0]) or (i + 1 < len(lines) and re.match(r"^\s*\|\s*:?-{2,}", lines[i + 1])):
            continue
        name = cells[0].strip("* ")
        if name:
            rows.append(name)
    return rows


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def match_methods(label: str, rows: list[str]) -> list[tuple[str, list[str]]]:
    """The table rows a leaf's label names, in label order, each with the names it used.

    A row 'A / B' answers to A or B; a name matches words starting with it ('Adapter Tuning' matches
    'Adapters'); where two names claim a word the longer full match wins ('Prompt Engineering' over 'Prompt').
    Example: ('PEFT (LoRA, QLoRA, Adapters)', ['LoRA / QLoRA', 'Adapter Tuning']) ->
      [('LoRA / QLoRA', ['LoRA', 'QLoRA']), ('Adapter Tuning', ['Adapters'])]
    """
    said = _WORD.findall(label.replace("<br>", " "))
    words = [w.casefold() for w in said]
    found = []  # (full, length, start, row, name)
    for row in rows:
        for name in (n.strip() for n in row.split(" / ")):
            parts = _words(name)
            for start in range(len(words)):
                k = 0
                while k < len(parts) and start + k < len(words) and words[start + k].startswith(parts[k]):
                    k += 1
                if k:
                    found.append((k == len(parts), k, start, row, " ".join(said[start:start + k])))
    claimed: set[int] = set()
    hits: dict[str, list[tuple[int, str]]] = {}
    for full, k, start, row, name in sorted(found, key=lambda f: (not f[0], -f[1], f[2])):
        span = set(range(start, start + k))
        if span & claimed:
            continue
        claimed |= span
        hits.setdefault(row, []).append((start, name))
    ordered = sorted(hits.items(), key=lambda kv: min(kv[1]))
    return [(row, list(dict.fromkeys(n for _, n in sorted(names)))) for row, names in ordered]


def build_map(chart: Flowchart, doc_id: str, source: str, rows: list[str], families: dict[str, list[str]]) -> DecisionMap:
    """Check the chart and turn it into a DecisionMap; raises ChartError naming the first bad node."""
    decisions = {n for n, (_, d) in chart.labels.items() if d}
    for a, t, b in chart.edges:
        for n in (a, b):
            if n not in chart.labels:
                raise ChartError(n, f"is used by the edge {a} --{(' ' + t + ' ') if t else ''}--> {b} but never defined")
    out: dict[str, list[tuple[str, str]]] = {n: [] for n in chart.labels}
    incoming: dict[str, int] = {n: 0 for n in chart.labels}
    for a, t, b in chart.edges:
        out[a].append((t, b))
        incoming[b] += 1
    answers: dict[str, dict[str, str]] = {}
    for n in sorted(decisions):
        got: dict[str, str] = {}
        for t, b in out[n]:
            key = ANSWERS.get(t.lower())
            if key is None:
                raise ChartError(n, f"has an edge labelled {t!r}; a decision's edges are labelled Да or Нет")
            if key in got:
                raise ChartError(n, f"has two {t!r} edges")
            got[key] = b
        for key, word in (("yes", "Да"), ("no", "Нет")):
            if key not in got:
                raise ChartError(n, f"«{chart.text(n)}» has no {word} edge")
        answers[n] = got
    roots = [n for n in chart.labels if incoming[n] == 0 and out[n]]
    if not roots:
        raise ChartError(next(iter(decisions)), "every node has an incoming edge: the chart is a cycle")
    # The first question: follow the root's single unlabelled edges until a decision.
    start, seen = roots[0], set()
    while start not in decisions:
        seen.add(start)
        nxt = [b for _, b in out[start]]
        if len(nxt) != 1 or nxt[0] in seen:
            raise ChartError(start, "the start must lead by one edge to the first question")
        start = nxt[0]
    _check_acyclic(start, out, chart)

    nodes, methods, next_steps = {}, {}, {}
    for n, (label, decision) in chart.labels.items():
        kind = "decision" if decision else ("start" if n in seen else "leaf")
        nodes[n] = {"kind": kind, "label": label, "text": render(label, decision)}
        if kind == "leaf":
            methods[n] = [Method(row, names, families.get(row, [])) for row, names in match_methods(label, rows)]
            next_steps[n] = [b for _, b in out[n] if not chart.labels[b][1]]
    return DecisionMap(doc_id, start, nodes, answers, next_steps, methods, source)


def _check_acyclic(start: str, out: dict[str, list[tuple[str, str]]], chart: Flowchart) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(n: str) -> None:
        state[n] = 1
        for _, b in out[n]:
            if state.get(b) == 1:
                raise ChartError(b, f"«{chart.text(b)}» is reached again from {n}: the chart has a cycle")
            if b not in state:
                visit(b)
        state[n] = 2

    visit(start)


def find_maps(markdown: str, doc_id: str, families: dict[str, list[str]]) -> tuple[list[DecisionMap], list[ChartError]]:
    """Every decision chart of a Markdown document, checked; malformed ones come back as errors."""
    maps, errors = [], []
    rows = table_rows(markdown)
    for m in _FENCE.finditer(markdown):
        chart = parse_flowchart(m.group(1))
        if not is_decision_chart(chart):
            continue
        try:
            maps.append(build_map(chart, doc_id, m.group(1).strip("\n"), rows, families))
        except ChartError as e:
            errors.append(e)
    return maps, errors


def map_path(settings) -> Path:
    return settings.data_dir / "decision_map.json"


def write_map(settings, documents: list[tuple[str, Path, str]], families: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Parse the documents' decision charts and save the first good one; returns (file, reason) failures.

    `documents` are (doc_id, path, text). With no good chart the old saved map is removed, so nobody walks a
    chart the corpus no longer has.
    """
    failed, found = [], []
    for doc_id, path, text in documents:
        maps, errors = find_maps(text, doc_id, families)
        found += maps
        failed += [(str(path), str(e)) for e in errors]
    target = map_path(settings)
    if found:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(found[0].to_json(), encoding="utf-8")
        tmp.replace(target)
    else:
        target.unlink(missing_ok=True)
    return failed


def load_map(settings) -> DecisionMap | None:
    path = map_path(settings)
    return DecisionMap.from_json(path.read_text(encoding="utf-8")) if path.is_file() else None
