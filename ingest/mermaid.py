"""Mermaid flowcharts -> plain sentences, one per edge, so that questions about a diagram can find it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Node shapes, longest delimiters first: [[..]], [(..)], ((..)), {{..}}, [..], (..), {..}, >..]
_SHAPE = r"""(?:\[\[(?P<a>.*?)\]\]|\[\((?P<b>.*?)\)\]|\(\((?P<c>.*?)\)\)|\{\{(?P<d>.*?)\}\}|\[(?P<e>.*?)\]|\((?P<f>.*?)\)|\{(?P<g>.*?)\}|>(?P<h>.*?)\])"""
_NODE = re.compile(r"\s*(?P<id>[A-Za-z0-9_]+)\s*" + _SHAPE + r"?")
# Arrows with optional text: A -- text --> B, A -->|text| B, A --> B, A -.-> B, A ==> B, A --- B
_ARROW = re.compile(
    r"\s*(?:--\s*(?P<t1>[^->|][^>]*?)\s*-->|==\s*(?P<t2>[^=>][^>]*?)\s*==>|-\.\s*(?P<t3>[^.>][^>]*?)\s*\.->|"
    r"(?:-->|==>|-\.->|---|-\.-|===)\s*(?:\|(?P<t4>[^|]*)\|)?)\s*"
)
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F\u200D]")


def strip_emoji(text: str) -> str:
    """Example: '🔧 Full Fine-Tuning' -> ' Full Fine-Tuning'."""
    return _EMOJI.sub("", text)


def _title(name: str, label: str | None) -> str:
    """A subgraph's title in both of its languages when its id and label differ in script.

    Example: ('Inference', 'Инференс и деплой') -> 'Инференс и деплой (Inference)'; ('S', 'Stack') -> 'Stack'.
    """
    title = _clean(label or name)
    cyrillic = re.search(r"[а-яёА-ЯЁ]", title) is not None
    return f"{title} ({name})" if cyrillic and re.fullmatch(r"[A-Za-z]{3,}", name) else title


def _clean(label: str) -> str:
    """Example: '🔧 Full Fine-Tuning<br/>Обучаем все параметры' -> 'Full Fine-Tuning<br>Обучаем все параметры'."""
    label = label.strip().strip('"')
    label = re.sub(r"<br\s*/?>", "<br>", label, flags=re.I)
    label = _EMOJI.sub("", label)
    return re.sub(r"[ \t]+", " ", label).strip()


def render(label: str, decision: bool) -> str:
    """A node as prose: a decision reads as one question, a box as 'title (detail)'.

    Example: ('Есть мощная GPU<br>и достаточно данных?', True) -> 'Есть мощная GPU и достаточно данных?';
    ('Full Fine-Tuning<br>Обучаем все параметры', False) -> 'Full Fine-Tuning (Обучаем все параметры)'.
    """
    parts = [p.strip() for p in label.split("<br>") if p.strip()]
    if not parts:
        return ""
    if decision or len(parts) == 1:
        return " ".join(parts)
    detail = " ".join(parts[1:])
    return f"{parts[0]} {detail}" if detail.startswith("(") and detail.endswith(")") else f"{parts[0]} ({detail})"


@dataclass
class Flowchart:
    """A parsed Mermaid flowchart: node labels (and whether each is a {decision}), labelled edges, subgraphs."""

    labels: dict[str, tuple[str, bool]] = field(default_factory=dict)  # id -> (clean label, is a decision)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (from, label, to), label '' when none
    groups: list[tuple[str, list[str]]] = field(default_factory=list)  # (title, member ids)
    lines: dict[str, int] = field(default_factory=dict)  # id -> 1-based line of the chart where it first appears

    def text(self, nid: str) -> str:
        """A node as prose (see `render`); its id when it has no label."""
        label, decision = self.labels.get(nid, (nid, False))
        return render(label, decision) or nid


def parse_flowchart(source: str) -> Flowchart:
    """Nodes, edges and subgraphs of a Mermaid flowchart (fences and directives are skipped).

    Example: 'B{GPU?} -- Да --> C[Full FT]' -> labels {'B': ('GPU?', True), 'C': ('Full FT', False)},
      edges [('B', 'Да', 'C')]
    """
    chart = Flowchart()
    for number, raw in enumerate(source.splitlines(), 1):
        line = raw.strip().rstrip(";")
        if not line or line.startswith(("%%", "```", "graph", "flowchart", "classDef", "class ", "style ", "linkStyle", "click ")):
            continue
        m = re.match(r"subgraph\s+(\w+)(?:\s*\[\s*\"?(.*?)\"?\s*\])?", line)
        if m:
            chart.groups.append((_title(m.group(1), m.group(2)), []))
            continue
        if line == "end":
            continue
        chain, pos = [], 0
        node = _NODE.match(line, pos)
        while node:
            nid = node.group("id")
            shape = next((node.group(k) for k in "abcdefgh" if node.group(k) is not None), None)
            if shape is not None:
                chart.labels[nid] = (_clean(shape), node.group("g") is not None or node.group("d") is not None)
            chart.lines.setdefault(nid, number)
            chain.append(nid)
            pos = node.end()
            arrow = _ARROW.match(line, pos)
            if not arrow or arrow.end() == pos:
                break
            text = next((arrow.group(k) for k in ("t1", "t2", "t3", "t4") if arrow.group(k)), "")
            chain.append(_clean(text))
            pos = arrow.end()
            node = _NODE.match(line, pos)
        if chart.groups and len(chain) == 1:
            chart.groups[-1][1].append(chain[0])
        for i in range(0, len(chain) - 2, 2):
            chart.edges.append((chain[i], chain[i + 1], chain[i + 2]))
    return chart


def render_edges(source: str) -> list[str]:
    """Sentences for a Mermaid flowchart's edges, then its groups (see `render_groups`).

    Example: 'B{Есть GPU?} -- Да --> C[Full Fine-Tuning<br/>все веса]'
      -> ['Есть GPU? — Да → Full Fine-Tuning (все веса)']
    """
    chart = parse_flowchart(source)
    lines = [f"{chart.text(a)} — {t} → {chart.text(b)}" if t else f"{chart.text(a)} → {chart.text(b)}" for a, t, b in chart.edges]
    return lines + _groups(chart)


def render_groups(source: str) -> list[str]:
    """One line per group: each subgraph with its members, and each node branching (unlabelled) into three or more.

    Example: 'graph TD\nC[PEFT] --> D1[LoRA]\nC --> D2[Adapters]\nC --> D3[BitFit]' -> ['PEFT: LoRA, Adapters, BitFit.'].
    """
    return _groups(parse_flowchart(source))


def _groups(chart: Flowchart) -> list[str]:
    out = [f"{title}: " + ", ".join(chart.text(m) for m in members) + "." for title, members in chart.groups if members]
    children: dict[str, list[str]] = {}
    for a, text, b in chart.edges:
        if not text:
            children.setdefault(a, []).append(b)
    return out + [f"{chart.text(a)}: " + ", ".join(chart.text(k) for k in kids) + "." for a, kids in children.items()
                  if len(kids) >= 3]
