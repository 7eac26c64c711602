"""Training questions: the curated corpus/qa/train.jsonl rows, read and checked."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import FinetuneError

CATEGORIES = ("lookup", "figure", "comparison", "method-choice", "follow-up", "unanswerable")
ROLES = ("user", "assistant")


@dataclass
class Question:
    id: str
    question: str
    answer: str
    language: str
    doc_ids: list[str] = field(default_factory=list)
    answerable: bool = True
    source: str = "curated"
    category: str = "lookup"  # generated pairs are single-passage lookups
    history: list[dict] = field(default_factory=list)  # earlier {role, content} turns a follow-up leans on

    def as_dict(self) -> dict:
        return asdict(self)

    def chat(self) -> list[dict]:
        """The conversation as a client sends it: the earlier turns, then the question."""
        return [*self.history, {"role": "user", "content": self.question}]


def load_questions(path: Path) -> list[Question]:
    """Rows of a questions JSONL file; a bad line is named in the error, with what is wrong in it."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"training questions file {path} does not exist")
    out, seen = [], {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise FinetuneError(f"{where}: not valid JSON ({e})") from e
        q = parse_row(row, where)
        if q.id in seen:
            raise FinetuneError(f"{where}: id {q.id!r} is already used on line {seen[q.id]}")
        seen[q.id] = n
        out.append(q)
    return out


def parse_row(row, where: str) -> Question:
    """One checked question, or FinetuneError naming `where` and what is wrong.

    Example: {'id': 't1', 'question': 'Q?', 'answer': 'A.', 'doc_ids': ['lora'], 'category': 'lookup'}
    -> Question('t1', 'Q?', 'A.', 'en', ['lora'], True, 'curated', 'lookup', []).
    """
    if not isinstance(row, dict):
        raise FinetuneError(f"{where}: a training question must be a JSON object, got {type(row).__name__}")
    for key in ("id", "question", "category"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise FinetuneError(f"{where}: missing or empty {key!r}")
    category = row["category"]
    if category not in CATEGORIES:
        raise FinetuneError(f"{where}: category {category!r} is not one of {', '.join(CATEGORIES)}")
    answerable = row.get("answerable", True)
    if not isinstance(answerable, bool):
        raise FinetuneError(f"{where}: 'answerable' must be true or false, got {answerable!r}")
    if answerable == (category == "unanswerable"):
        raise FinetuneError(f"{where}: category 'unanswerable' and answerable: false go together "
                            f"(got category {category!r}, answerable {str(answerable).lower()})")
    doc_ids = row.get("doc_ids") or []
    if not isinstance(doc_ids, list) or not all(isinstance(d, str) and d for d in doc_ids):
        raise FinetuneError(f"{where}: 'doc_ids' must be a list of document ids, got {doc_ids!r}")
    answer = row.get("answer") or ""
    if not isinstance(answer, str):
        raise FinetuneError(f"{where}: 'answer' must be a string")
    if answerable and (not doc_ids or not answer.strip()):
        raise FinetuneError(f"{where}: an answerable question needs doc_ids and an answer")
    history = parse_history(row.get("history") or [], where)
    if (category == "follow-up") != bool(history):
        raise FinetuneError(f"{where}: a follow-up needs a history, and only a follow-up has one "
                            f"(category {category!r}, {len(history)} history turns)")
    return Question(
        id=row["id"], question=row["question"], answer=answer, language=str(row.get("language") or "en"),
        doc_ids=list(doc_ids), answerable=answerable, source=str(row.get("source") or "curated"),
        category=category, history=history,
    )


def parse_history(turns, where: str) -> list[dict]:
    """Earlier turns, checked: alternating user/assistant {role, content}, ending on the assistant's answer."""
    if not isinstance(turns, list):
        raise FinetuneError(f"{where}: 'history' must be a list of {{role, content}} turns")
    out = []
    for i, turn in enumerate(turns):
        if (not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str)
                or not turn["content"].strip()):
            raise FinetuneError(f"{where}: history turn {i} needs role user|assistant and non-empty content, "
                                f"got {turn!r}")
        if turn["role"] != ROLES[i % 2]:
            raise FinetuneError(f"{where}: history turn {i} should be {ROLES[i % 2]!r}: turns alternate, user first")
        out.append({"role": turn["role"], "content": turn["content"]})
    if out and out[-1]["role"] != "assistant":
        raise FinetuneError(f"{where}: history must end with the assistant's answer to the previous question")
    return out
