"""The gold question sets (dev: evals/questions.jsonl, heldout: evals/heldout.jsonl): load and validate them, and read
the corpus text their answers come from."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EvalError

REQUIRED = ("id", "question", "language", "category", "reference", "facts", "gold_doc_ids", "refuse")
LANGUAGES = ("en", "ru")
SETS = ("dev", "heldout")  # dev is tuned on; heldout never is


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    language: str
    category: str
    reference: str
    facts: tuple[str, ...]
    gold_doc_ids: tuple[str, ...]
    refuse: bool
    gold_section: str | None = None
    history: tuple[dict, ...] = field(default_factory=tuple)
    gold_set: str = "dev"  # which of SETS the question belongs to

    def messages(self) -> list[dict]:
        """What a chat client sends: the earlier turns, then the question."""
        return [*({"role": m["role"], "content": m["content"]} for m in self.history), {"role": "user", "content": self.question}]


def retrieval_query(messages: list[dict]) -> str:
    """The query retrieval sees over HTTP: the user turns joined.

    Example: [user 'What is LoRA?', assistant '…', user 'Cost?'] -> 'What is LoRA?\\nCost?'.
    """
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def parse_question(obj: dict, where: str, gold_set: str = "dev") -> Question:
    """One JSON object -> Question, or EvalError naming `where` and what is wrong."""
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise EvalError(f"{where}: missing {missing}")
    if obj["language"] not in LANGUAGES:
        raise EvalError(f"{where}: language {obj['language']!r} is not one of {LANGUAGES}")
    for pattern in obj["facts"]:
        try:
            re.compile(pattern)
        except re.error as e:
            raise EvalError(f"{where}: fact {pattern!r} is not a valid regex: {e}") from e
    if not obj["refuse"] and not (obj["facts"] and obj["gold_doc_ids"]):
        raise EvalError(f"{where}: an answerable question needs facts and gold_doc_ids")
    history = tuple(obj.get("history") or ())
    if any(m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str) for m in history):
        raise EvalError(f"{where}: history turns need role user|assistant and a content string")
    return Question(
        str(obj["id"]), obj["question"], obj["language"], obj["category"], obj["reference"], tuple(obj["facts"]),
        tuple(obj["gold_doc_ids"]), bool(obj["refuse"]), obj.get("gold_section"), history, gold_set,
    )


def load_questions(path: Path, gold_set: str = "dev") -> list[Question]:
    """All questions of a JSONL gold set, validated; raises EvalError with the file and line of the first problem."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EvalError(f"cannot read the gold set {path}: {e}") from e
    out: list[Question] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{path}:{n}: not JSON: {e}") from e
        out.append(parse_question(obj, f"{path}:{n}", gold_set))
    ids = [q.id for q in out]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise EvalError(f"{path}: duplicate ids {dupes}")
    if not out:
        raise EvalError(f"{path}: no questions")
    return out


def set_paths(settings, which: str = "dev") -> dict[str, Path]:
    """'dev' | 'heldout' | 'all' -> {set name: its gold file}, in SETS order.

    Example: 'all' -> {'dev': <root>/evals/questions.jsonl, 'heldout': <root>/evals/heldout.jsonl}.
    """
    files = {"dev": settings.evals.questions, "heldout": settings.evals.heldout}
    if which != "all" and which not in files:
        raise EvalError(f"unknown question set {which!r}; choose one of {', '.join((*SETS, 'all'))}")
    return {name: settings.path(files[name]) for name in SETS if which in (name, "all")}


def load_sets(settings, which: str = "dev") -> list[Question]:
    """The questions of the chosen sets, each tagged with its set; ids must not repeat across sets."""
    out = [q for name, path in set_paths(settings, which).items() for q in load_questions(path, name)]
    ids = [q.id for q in out]
    shared = sorted({i for i in ids if ids.count(i) > 1})
    if shared:
        raise EvalError(f"the question sets share ids {shared}; each id must name one question")
    return out


def corpus_files(settings) -> dict[str, Path]:
    """doc_id -> path of each manifest document. Example: {'lora': <root>/corpus/papers/lora.md, ...}."""
    from ingest.sources import read_manifest

    return {d["id"]: settings.path(d["path"]) for d in read_manifest(settings)}


def corpus_texts(settings) -> dict[str, str]:
    """doc_id -> raw text of each manifest document (the files the gold facts must come from)."""
    return {doc_id: path.read_text(encoding="utf-8") for doc_id, path in corpus_files(settings).items()}
