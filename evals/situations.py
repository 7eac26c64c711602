"""Situation inference accuracy: labelled descriptions -> the chart answers inferred, by rules alone or rules + model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def load_situations(path: Path) -> list[dict]:
    """Rows {id, language, situation, answers: {decision id: yes|no}} (only the questions the text settles)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def score(rows: list[dict], infer: Callable[[str, str], dict[str, tuple[str, str]]]) -> dict:
    """Per language: accuracy = labelled answers inferred right / labelled; precision = right / inferred.

    An answer inferred for a question the text does not settle counts against precision.
    Example: one row labelled {B: no, J: yes}, inferred {B: no, D: yes} -> accuracy 0.5, precision 0.5.
    """
    out = {}
    for language in sorted({r["language"] for r in rows}):
        labelled = right = inferred = 0
        misses = []
        for r in (r for r in rows if r["language"] == language):
            got = {k: v[0] for k, v in infer(r["situation"], language).items()}
            labelled += len(r["answers"])
            inferred += len(got)
            ok = sum(1 for k, v in r["answers"].items() if got.get(k) == v)
            right += ok
            if ok < len(r["answers"]) or len(got) > ok:
                misses.append({"id": r["id"], "want": r["answers"], "got": got})
        out[language] = {"situations": sum(1 for r in rows if r["language"] == language), "labelled": labelled,
                         "inferred": inferred, "right": right, "accuracy": round(right / labelled, 3) if labelled else 0.0,
                         "precision": round(right / inferred, 3) if inferred else 0.0, "misses": misses}
    return out
