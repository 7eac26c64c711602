"""The decision map as a walk: yes/no answers -> the next question or the method leaf, in Russian or English."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ingest.decision import DecisionMap, load_map

from .errors import BadRequest, NotReady

ANSWER_WORDS = {"yes": "yes", "no": "no", "да": "yes", "нет": "no", "y": "yes", "n": "no", "д": "yes", "н": "no"}
SAY = {"en": {"yes": "yes", "no": "no"}, "ru": {"yes": "да", "no": "нет"}}
LANGUAGES = ("en", "ru")


def normalize(answer: str, position: int) -> str:
    """Example: ('Да', 1) -> 'yes'; ('maybe', 2) raises BadRequest naming answer 2."""
    key = ANSWER_WORDS.get(str(answer).strip().casefold())
    if key is None:
        raise BadRequest(f"answer {position} is {answer!r}: each answer must be yes or no (да or нет)")
    return key


@dataclass
class Step:
    id: str
    question: str
    answer: str  # yes | no
    inferred_from: str | None = None  # the words of the situation this answer was inferred from

    def as_dict(self, language: str) -> dict:
        d = {"id": self.id, "question": self.question, "answer": self.answer, "said": SAY[language][self.answer]}
        if self.inferred_from is not None:
            d["inferred_from"] = self.inferred_from
        return d


@dataclass
class Walk:
    node: str  # the next question, or the leaf reached
    done: bool
    path: list[Step] = field(default_factory=list)


class Advisor:
    """The parsed chart plus its reviewed English; `walk` is pure."""

    def __init__(self, chart: DecisionMap, english: dict[str, dict], cells: dict[str, str] | None = None):
        self.chart = chart
        self.english = english
        self.cells = cells or {}  # the method table's Russian cells -> their reviewed English

    @classmethod
    def load(cls, settings) -> "Advisor":
        chart = load_map(settings)
        if chart is None:
            raise NotReady("no decision chart in the index: run `ftatlas ingest` (it names a malformed chart)")
        path = english_path(settings, chart)
        return cls(chart, read_english(path), read_cells(path))

    def text(self, node: str, language: str) -> str:
        """The node's text; English from the reviewed file, the atlas's own Russian when it has none or is stale."""
        ru = self.chart.nodes[node]["text"]
        if language == "en":
            entry = self.english.get(node) or {}
            if entry.get("ru") == ru and entry.get("en"):
                return str(entry["en"])
        return ru

    def cell(self, text: str, language: str) -> str:
        """A method-table cell as shown: its reviewed English in English, else the atlas's own text.
        Example: ('Мультизадачные системы', 'en') -> 'Multi-task systems'; ('PEFT', 'en') -> 'PEFT'."""
        return self.cells.get(text, text) if language == "en" else text

    def stale_english(self) -> list[str]:
        """Nodes whose English is missing or was written for other Russian text."""
        return [n for n, v in self.chart.nodes.items()
                if not (self.english.get(n) or {}).get("en") or (self.english.get(n) or {}).get("ru") != v["text"]]

    def is_leaf(self, node: str) -> bool:
        return node not in self.chart.answers

    def walk(self, answers: list[str], language: str = "en", inferred: dict[str, tuple[str, str]] | None = None) -> Walk:
        """Follow the answers from the first question; then inferred {node: (answer, from)} where they apply.

        Example (the atlas): ['no', 'no', 'yes'] -> Walk(node='G', done=True) (PEFT), ['no'] -> the next question.
        """
        if language not in LANGUAGES:
            raise BadRequest(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}")
        keys = [normalize(a, i) for i, a in enumerate(answers, 1)]
        node, path = self.chart.start, []
        for i, key in enumerate(keys, 1):
            if self.is_leaf(node):
                raise BadRequest(f"{len(keys)} answers given, but this path ends after {i - 1}: "
                                 f"it reaches «{self.text(node, language)}»")
            path.append(Step(node, self.text(node, language), key))
            node = self.chart.answers[node][key]
        while inferred and not self.is_leaf(node) and node in inferred:
            key, words = inferred[node]
            path.append(Step(node, self.text(node, language), key, words))
            node = self.chart.answers[node][key]
        return Walk(node, self.is_leaf(node), path)

    def not_taken(self, walk: Walk) -> list[tuple[Step, str]]:
        """(step, node the other answer leads to) for each question on the path."""
        return [(s, self.chart.answers[s.id]["no" if s.answer == "yes" else "yes"]) for s in walk.path]

    def mermaid(self, walk: Walk | None = None, language: str = "ru") -> str:
        """The chart redrawn from the graph in `language` (labels quoted, so any text is valid Mermaid), with the
        nodes and links of `walk` highlighted."""
        chart = self.chart
        lines, edges = ["flowchart TD"], []
        for nid, node in chart.nodes.items():
            text = (node["label"] if language == "ru" else self.text(nid, language)).replace('"', "#quot;")
            lines.append(f'    {nid}{{"{text}"}}' if node["kind"] == "decision" else f'    {nid}["{text}"]')
        for nid, node in chart.nodes.items():
            if node["kind"] == "start":
                edges.append((nid, "", chart.start))
        for q, to in chart.answers.items():
            edges += [(q, SAY[language][key], to[key]) for key in ("yes", "no")]
        for leaf, nxt in chart.next_steps.items():
            edges += [(leaf, "", n) for n in nxt]
        lines += [f"    {a} -- {t} --> {b}" if t else f"    {a} --> {b}" for a, t, b in edges]
        if walk:
            lit = [n for n, v in chart.nodes.items() if v["kind"] == "start"] + [s.id for s in walk.path] + [walk.node]
            on_path = set(zip(lit, lit[1:]))
            lines += [f"    linkStyle {i} stroke:#b07d00,stroke-width:4px" for i, (a, _, b) in enumerate(edges) if (a, b) in on_path]
            lines += [f"    style {n} fill:#ffe08a,stroke:#b07d00,stroke-width:3px" for n in lit]
        return "\n".join(lines)


def english_path(settings, chart: DecisionMap) -> Path:
    """The reviewed English sits next to the charted document. Example: corpus/atlas.md -> corpus/atlas.en.yaml."""
    from ingest.sources import read_manifest

    for d in read_manifest(settings):
        if d["id"] == chart.doc_id:
            return settings.path(Path(d["path"]).with_suffix(".en.yaml"))
    return settings.path(f"corpus/{chart.doc_id}.en.yaml")


def _reviewed(path: Path, part: str) -> dict:
    """One part (`nodes` or `cells`) of the reviewed English file; {} when there is none."""
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(part) or {}


def read_cells(path: Path) -> dict[str, str]:
    """The reviewed English of the atlas's method-table cells: {Russian cell: English}."""
    return {str(k): str(v) for k, v in _reviewed(path, "cells").items()}


def read_english(path: Path) -> dict[str, dict]:
    """The reviewed English of the chart's nodes: {node id: {ru, en, cues}}."""
    return {str(k): v for k, v in _reviewed(path, "nodes").items()}
