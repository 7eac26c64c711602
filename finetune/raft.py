"""RAFT examples: the server's own prompt filled with the oracle passage and retrieved distractors, plus the target."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from serve.evidence import format_answer, quote_holds
from serve.grounding import reading
from serve.prompt import NO_ANSWER, build_messages, split_sentences
from serve.rag import retrieval_query
from serve.retrieval import Passage, RetrievalOptions, is_russian

from .overlap import tokens
from .questions import Question

ORACLE_CANDIDATES = 8
MIN_TRIMMED_OVERLAP = 0.8  # share of the oracle's answer overlap that must survive trimming
EXTRA_CANDIDATES = 12  # retrieved beyond what is needed, since hits from the question's own docs are skipped
MAX_QUOTES = 2  # RAFT quotes the sentence(s) that carry the answer, not the passage
MIN_QUOTE_GAIN = 0.2  # a second sentence is quoted only if it adds this share of the answer's tokens


@dataclass
class Example:
    id: str
    question: str
    language: str
    kind: str  # "oracle", "no-oracle" (oracle dropped, RAFT's P) or "unanswerable"
    messages: list[dict]
    oracle: int | None = None  # 1-based position of the oracle passage in the prompt
    passages: list[dict] = field(default_factory=list)  # {id, doc_id} in prompt order
    doc_ids: list[str] = field(default_factory=list)
    source: str = "curated"
    oracle_overlap: float | None = None
    tokens: int = 0

    def row(self) -> dict:
        """The JSONL line: chat messages for SFT plus what the data tests and the card need."""
        meta = {k: getattr(self, k) for k in ("id", "question", "language", "kind", "oracle", "passages", "doc_ids",
                                              "source", "oracle_overlap", "tokens")}
        return {"messages": self.messages, "meta": meta}


def answer_overlap(answer: str, text: str) -> float:
    """Share of the answer's tokens found in a passage. Example: ('bias terms only', 'Only the bias terms train') -> 1.0."""
    a = {t for t in tokens(answer) if len(t) > 2 or t.isdigit()}
    return len(a & tokens(text)) / len(a) if a else 0.0


def cite(answer: str, n: int) -> str:
    """The answer citing passage n before its final stop. Example: ('BitFit trains biases.', 2) -> 'BitFit trains biases [2].'."""
    answer = answer.strip()
    m = re.search(r"[.!?…]+$", answer)
    return f"{answer[: m.start()]} [{n}]{m.group(0)}" if m else f"{answer} [{n}]"


def pick_quotes(answer: str, text: str, terms: str = "") -> list[str]:
    """The passage sentences that carry the answer (chosen greedily by the answer tokens each adds), verbatim, in
    passage order. `terms` adds words to look for: a Russian answer's English glossary terms, for an English passage.

    Example: ('Rank 8 works.', 'LoRA is cheap. A rank of 8 works well. It ends.') -> ['A rank of 8 works well.'].
    """
    want = {t for t in tokens(f"{answer} {terms}") if len(t) > 2 or t.isdigit()}
    # split_sentences strips Markdown; only sentences that still stand verbatim in the passage can be quoted.
    pool = [s for s in dict.fromkeys(split_sentences(text)) if quote_holds(s, text)]
    chosen: list[str] = []
    covered: set[str] = set()
    while pool and len(chosen) < MAX_QUOTES and want:
        best = max(pool, key=lambda s: (len((want - covered) & tokens(s)), -pool.index(s)))
        gain = len((want - covered) & tokens(best)) / len(want)
        if gain == 0 or (chosen and gain < MIN_QUOTE_GAIN):
            break
        chosen.append(best)
        covered |= want & tokens(best)
        pool.remove(best)
    order = split_sentences(text)
    return sorted(chosen, key=order.index)


def target(kind: str, answer: str, lang: str, n: int | None, quotes: list[str]) -> str:
    """The assistant turn in the RAFT answer format (serve.evidence): quotes of passage n, then the short answer.

    Oracle examples quote and cite the oracle; no-oracle examples (RAFT's 1-P share) still answer, as in the paper,
    with nothing to quote or cite; only unanswerable questions refuse.
    Example: ('oracle', 'BitFit trains biases.', 'en', 2, ['Only biases train.']) ->
    '##begin_quote## Only biases train. ##end_quote## [2]\n<ANSWER>: BitFit trains biases [2].'.
    """
    if kind == "unanswerable":
        return format_answer([], NO_ANSWER[lang])
    if kind == "no-oracle":
        return format_answer([], answer)
    return format_answer([(n, q) for q in quotes], cite(answer, n))


def pick_oracle(answer: str, passages: list[Passage]) -> tuple[Passage | None, float]:
    """The passage with the highest answer overlap, the better-ranked one on ties."""
    if not passages:
        return None, 0.0
    scores = [answer_overlap(answer, f"{p.title} {p.section} {p.text}") for p in passages]
    best = max(range(len(passages)), key=lambda i: (scores[i], -i))
    return passages[best], scores[best]


class RaftBuilder:
    """Builds one example per question with the real retriever; `count_tokens` measures a whole chat."""

    def __init__(self, retriever, count_tokens, *, distractors: int, max_seq_len: int, seed: int, mode: str = "hybrid"):
        self.retriever = retriever
        self.count_tokens = count_tokens
        self.n_distractors = distractors
        self.max_seq_len = max_seq_len
        self.seed = seed
        self.mode = mode

    def terms(self, answer: str) -> str:
        """English glossary terms of a Russian answer: they find its evidence in an English passage."""
        return self.retriever.glossary.expand(answer) if is_russian(answer) else ""

    def oracle(self, q: Question) -> tuple[Passage | None, float]:
        hits = self.retriever.retrieve(retrieval_query(q.chat()),
                                       RetrievalOptions(mode=self.mode, top_k=ORACLE_CANDIDATES, doc_ids=q.doc_ids))
        return pick_oracle(q.answer, hits)

    def distractors(self, q: Question, k: int) -> list[Passage]:
        """The retriever's top hits for the question (with its history, as the server searches) from documents other
        than its own, best first."""
        hits = self.retriever.retrieve(retrieval_query(q.chat()),
                                       RetrievalOptions(mode=self.mode, top_k=k + EXTRA_CANDIDATES))
        return [p for p in hits if p.doc_id not in q.doc_ids][:k]

    def build(self, q: Question, drop_oracle: bool) -> tuple[Example | None, str]:
        """(example, '') or (None, why it was skipped)."""
        lang = q.language if q.language in NO_ANSWER else "en"
        oracle, overlap = (None, None)
        if q.answerable:
            oracle, overlap = self.oracle(q)
            if oracle is None:
                return None, "oracle document not in the index"
        kind = "oracle" if q.answerable and not drop_oracle else ("no-oracle" if q.answerable else "unanswerable")
        # Without the oracle, one more distractor keeps the passage count the same, so the count gives nothing away.
        distractors = self.distractors(q, self.n_distractors + (kind != "oracle"))
        passages = ([oracle] if kind == "oracle" else []) + distractors
        if not passages:
            return None, "no passages retrieved"
        rng = random.Random(f"{self.seed}:{q.id}")
        order = rng.sample(passages, len(passages))
        # The server trims every passage to its most relevant sentences before the model reads them; so do we.
        search = self.retriever.search_query(retrieval_query(q.chat()))
        trimmed, _ = reading(self.retriever.embedder, q.question, order, search)
        by_id = {p.id: t for p, t in zip(order, trimmed)}
        order = trimmed
        distractors = [by_id[p.id] for p in distractors]
        if kind == "oracle":
            oracle = by_id[oracle.id]
            kept = answer_overlap(q.answer, f"{oracle.title} {oracle.section} {oracle.text}")
            if kept < MIN_TRIMMED_OVERLAP * overlap:
                return None, "trimming cut the answer out of the oracle passage"
        while True:
            ex = self._example(q, lang, kind, order, oracle if kind == "oracle" else None, overlap)
            if ex.tokens <= self.max_seq_len:
                return ex, ""
            # Drop the lowest-ranked distractor first: the oracle and the hardest distractors stay.
            droppable = [p for p in reversed(distractors) if p in order]
            if not droppable or (kind != "oracle" and len(order) == 1):
                return None, "too long for max_seq_len even with one passage"
            order.remove(droppable[0])

    def _example(self, q: Question, lang: str, kind: str, order: list[Passage], oracle: Passage | None,
                 overlap: float | None) -> Example:
        messages = build_messages(q.question, order, lang, q.history)  # a follow-up carries its earlier turns
        n = order.index(oracle) + 1 if oracle is not None else None
        # No sentence to quote (a Russian answer whose words the English passage lacks): the target answers and cites.
        quotes = pick_quotes(q.answer, oracle.text, self.terms(q.answer)) if oracle is not None else []
        messages.append({"role": "assistant", "content": target(kind, q.answer, lang, n, quotes)})
        return Example(
            id=q.id, question=q.question, language=lang, kind=kind, messages=messages, oracle=n,
            passages=[{"id": p.id, "doc_id": p.doc_id} for p in order], doc_ids=list(q.doc_ids), source=q.source,
            oracle_overlap=None if overlap is None else round(overlap, 3), tokens=self.count_tokens(messages),
        )
