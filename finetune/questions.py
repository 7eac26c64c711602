"""Training questions: the curated corpus/qa/train.jsonl rows, read and checked."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import FinetuneError


@dataclass
class Question:
    id: str
    question: str
    answer: str
    language: str
    doc_ids: list[str] = field(default_factory=list)
    answerable: bool = True
    source: str = "curated"

    def as_dict(self) -> dict:
        return asdict(self)


def load_questions(path: Path) -> list[Question]:
    """Rows of a questions JSONL file; a bad line is named in the error."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"training questions file {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            q = Question(
                id=str(row["id"]), question=str(row["question"]), answer=str(row.get("answer") or ""),
                language=str(row.get("language") or "en"), doc_ids=list(row.get("doc_ids") or []),
                answerable=bool(row.get("answerable", True)), source=str(row.get("source") or "curated"),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise FinetuneError(f"{path}:{n}: not a training question ({e})") from e
        if q.answerable and (not q.doc_ids or not q.answer):
            raise FinetuneError(f"{path}:{n}: an answerable question needs doc_ids and an answer")
        out.append(q)
    return out
