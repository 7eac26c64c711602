"""Near-duplicate detection on questions: keeps the training data provably disjoint from the eval sets (dev and held-out)."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

EVAL_JACCARD = 0.5  # an eval question and a training question this similar count as the same question
DEDUPE_JACCARD = 0.8  # two training questions this similar count as one


def tokens(text: str) -> frozenset[str]:
    """Normalised word tokens. Example: 'Что такое LoRA?  ЁЖ' -> {'что', 'такое', 'lora', 'еж'}."""
    text = unicodedata.normalize("NFKC", text).lower().replace("ё", "е")
    return frozenset(re.findall(r"\w+", text))


def normalise(text: str) -> str:
    """The question as compared for equality. Example: ' What is  LoRA? ' -> 'what is lora'."""
    text = unicodedata.normalize("NFKC", text).lower().replace("ё", "е")
    return " ".join(re.findall(r"\w+", text))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Token-set Jaccard similarity. Example: {'a', 'b'} vs {'b', 'c'} -> 1/3."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def same_question(a: str, b: str, threshold: float) -> bool:
    """Equal after normalisation, or token Jaccard >= threshold. Example: ('What is LoRA?', 'what is LoRA') -> True."""
    return normalise(a) == normalise(b) or jaccard(tokens(a), tokens(b)) >= threshold


class EvalGuard:
    """Answers 'does this question (or a near-duplicate) belong to the eval set?' for every candidate example."""

    def __init__(self, questions: list[dict], threshold: float = EVAL_JACCARD):
        self.threshold = threshold
        self.items = [(q.get("id", ""), normalise(q["question"]), tokens(q["question"])) for q in questions]

    @classmethod
    def from_file(cls, *paths: Path, threshold: float = EVAL_JACCARD) -> "EvalGuard":
        """The questions of one or more eval JSONL files (ids stay unique across them: q001…, h001…)."""
        rows = [json.loads(line) for path in paths for line in Path(path).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        return cls(rows, threshold)

    def match(self, question: str) -> str | None:
        """The id of the eval question that `question` duplicates, else None."""
        norm, toks = normalise(question), tokens(question)
        for qid, enorm, etoks in self.items:
            if norm == enorm or jaccard(toks, etoks) >= self.threshold:
                return qid
        return None


def dedupe(questions: list[str], threshold: float = DEDUPE_JACCARD) -> list[int]:
    """Indices of the questions kept, first occurrence wins. Example: ['What is LoRA?', 'what is lora', 'Why?'] -> [0, 2]."""
    kept: list[int] = []
    seen_norm: set[str] = set()
    seen_toks: list[frozenset[str]] = []
    for i, q in enumerate(questions):
        norm, toks = normalise(q), tokens(q)
        if norm in seen_norm or any(jaccard(toks, t) >= threshold for t in seen_toks):
            continue
        kept.append(i)
        seen_norm.add(norm)
        seen_toks.append(toks)
    return kept
