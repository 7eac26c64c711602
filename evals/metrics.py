"""Pure scoring functions: retrieval ranks, answer overlap, citations, refusals and language, each on plain values."""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"\w+", re.UNICODE)
_CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
REFUSAL = re.compile(
    r"do(?:es)? not (?:contain|cover|mention|say|include)|don't (?:contain|cover|mention|know)|"
    r"not (?:in|covered by|mentioned in|found in) the (?:passages|sources|context|documents)|"
    r"(?:cannot|can't|can not|unable to) (?:answer|find)|no information|"
    r"не содерж|не охватыва|не упомина|нет (?:ответа|информации|сведений|данных)|"
    r"не могу (?:ответить|найти)|невозможно ответить|не нашл",
    re.IGNORECASE,
)


def tokens(text: str) -> list[str]:
    """Lower-cased Unicode word tokens. Example: 'LoRA обучает BA-матрицы.' -> ['lora', 'обучает', 'ba', 'матрицы']."""
    return _WORD.findall(text.casefold())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-tokens F1. Example: ('обучает только смещения', 'BitFit обучает смещения') -> 2/3."""
    pred, ref = tokens(prediction), tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length. Example: (['a', 'b', 'c', 'd'], ['a', 'c', 'd']) -> 3."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over Unicode tokens. Example: ('низкоранговые матрицы A и B', 'матрицы A и B обучаются') -> 0.8."""
    pred, ref = tokens(prediction), tokens(reference)
    lcs = lcs_length(pred, ref)
    if not lcs:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


def fact_hits(facts: list[str], text: str) -> list[bool]:
    """Which fact patterns (case-insensitive regexes) occur in text. Example: (['NF4', 'квантил'], 'NF4 ...') -> [True, False]."""
    return [re.search(f, text, re.IGNORECASE) is not None for f in facts]


def fact_recall(facts: list[str], text: str) -> float | None:
    """Share of facts present in text; None when there are no facts. Example: (['bias', 'head'], 'only the bias') -> 0.5."""
    hits = fact_hits(facts, text)
    return sum(hits) / len(hits) if hits else None


def context_fact_recall(facts: list[str], passages: list[str], k: int) -> float | None:
    """Share of facts found in the top-k passages' text. Example: (['BART'], ['DPR ...', 'BART ...'], 1) -> 0.0."""
    return fact_recall(facts, "\n".join(passages[:k]))


def first_gold_rank(ranked: list[str], gold: set[str]) -> int | None:
    """1-based rank of the first passage from a gold document. Example: (['a', 'b', 'g'], {'g'}) -> 3."""
    return next((i for i, d in enumerate(ranked, 1) if d in gold), None)


def hit_at_k(ranked: list[str], gold: set[str], k: int) -> float:
    """1.0 when a gold document is among the top k. Example: (['a', 'g'], {'g'}, 1) -> 0.0; k=2 -> 1.0."""
    rank = first_gold_rank(ranked[:k], gold)
    return 1.0 if rank else 0.0


def reciprocal_rank(ranked: list[str], gold: set[str]) -> float:
    """1/rank of the first gold passage, 0 when none. Example: (['a', 'g', 'g'], {'g'}) -> 0.5."""
    rank = first_gold_rank(ranked, gold)
    return 1.0 / rank if rank else 0.0


def ndcg_at_k(ranked: list[str], gold: set[str], k: int = 10) -> float:
    """Binary nDCG over documents: each gold document gains once, at its first passage.

    Example: (['g1', 'a', 'g1', 'g2'], {'g1', 'g2'}, 10) -> (1 + 1/log2(5)) / (1 + 1/log2(3)) ≈ 0.8772.
    """
    seen: set[str] = set()
    dcg = 0.0
    for i, d in enumerate(ranked[:k], 1):
        if d in gold and d not in seen:
            seen.add(d)
            dcg += 1.0 / math.log2(i + 1)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(gold), k) + 1))
    return dcg / ideal if ideal else 0.0


def cited_indices(answer: str) -> list[int]:
    """The [n] citations in order of first use. Example: 'A [2]. B [1, 3][2].' -> [2, 1, 3]."""
    out: list[int] = []
    for group in _CITATION.findall(answer):
        for n in re.split(r"\s*[,;]\s*", group):
            if int(n) not in out:
                out.append(int(n))
    return out


def citation_validity(cited: list[int], indices: set[int]) -> float | None:
    """1.0 when every citation names a returned source's index; None without citations. Example: ([1, 6], {1, 2}) -> 0.0."""
    if not cited:
        return None
    return 1.0 if all(n in indices for n in cited) else 0.0


def citation_precision(cited: list[int], doc_by_index: dict[int, str], gold: set[str]) -> float | None:
    """Share of citations whose source is a gold document; None without citations or gold.

    Example: ([1, 2, 7], {1: 'lora', 2: 'dora', 3: 'qlora'}, {'lora'}) -> 1/3 (an invalid [7] counts as not gold).
    """
    if not cited or not gold:
        return None
    return sum(1 for n in cited if doc_by_index.get(n) in gold) / len(cited)


def quoted_sentences(answer: str) -> list[str]:
    """The quotes of an extractive answer: each piece of text that ends at a citation.

    Example: 'Из источников: A is B. [1] C holds. [3]' -> ['Из источников: A is B.', 'C holds.'].
    """
    parts = re.split(r"\s*\[\d+(?:\s*[,;]\s*\d+)*\]", answer)
    return [p.strip() for p in parts[:-1] if p.strip()]


def quote_precision(facts: list[str], answer: str) -> float | None:
    """Share of quoted sentences holding at least one gold fact; None without quotes or facts.

    Example: (['TRL'], 'TRL (PPOTrainer). [1] Do not use FLAN here. [2]') -> 0.5.
    """
    quotes = quoted_sentences(answer)
    if not quotes or not facts:
        return None
    return sum(1 for q in quotes if any(fact_hits(facts, q))) / len(quotes)


def is_refusal(answer: str) -> bool:
    """Whether the answer declines for lack of sources. Example: 'Источники не содержат ответа.' -> True."""
    return REFUSAL.search(answer) is not None


def language_of(text: str) -> str | None:
    """'ru' when Cyrillic letters outnumber Latin ones, else 'en'; None without letters. Example: 'LoRA — это метод' -> 'ru'."""
    cyr = len(re.findall(r"[а-яёА-ЯЁ]", text))
    lat = len(re.findall(r"[A-Za-z]", text))
    if not cyr and not lat:
        return None
    return "ru" if cyr > lat else "en"


def cosine(a, b) -> float:
    """Cosine of two vectors. Example: ([1, 0], [1, 1]) -> 0.7071."""
    dot = sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(float(x) ** 2 for x in a)), math.sqrt(sum(float(y) ** 2 for y in b))
    return dot / (na * nb) if na and nb else 0.0


def mean(values) -> float | None:
    """Mean of the values that are not None; None when there are none. Example: [1.0, None, 0.0] -> 0.5."""
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
