"""One question's scores: the retrieval metrics of a ranked passage list and the answer metrics of a response."""

from __future__ import annotations

from . import metrics as m
from .gold import Question

K = 5  # hit@5 and context fact recall@5: the passages the model is given by default
NDCG_K = 10  # ranking depth retrieved for the rank metrics
RETRIEVAL_KEYS = (f"hit@{K}", "mrr", f"ndcg@{NDCG_K}", f"context_fact_recall@{K}", f"context_chars@{K}")
ANSWER_KEYS = ("fact_recall", "token_f1", "rouge_l", "embed_sim", "citation_precision", "citation_validity", "language_match",
               "quote_precision")


def score_retrieval(q: Question, passages: list[dict]) -> dict[str, float | None]:
    """Rank metrics against the gold documents; all None for a question without gold (out of scope).

    Example: gold {'bitfit'}, passages from ['lora', 'bitfit', ...] -> {'hit@5': 1.0, 'mrr': 0.5, ...}.
    """
    if not q.gold_doc_ids:
        return dict.fromkeys(RETRIEVAL_KEYS)
    ranked = [p["doc_id"] for p in passages]
    gold = set(q.gold_doc_ids)
    return {
        f"hit@{K}": m.hit_at_k(ranked, gold, K),
        "mrr": m.reciprocal_rank(ranked[:NDCG_K], gold),
        f"ndcg@{NDCG_K}": m.ndcg_at_k(ranked, gold, NDCG_K),
        f"context_fact_recall@{K}": m.context_fact_recall(list(q.facts), [p["text"] for p in passages], K),
        f"context_chars@{K}": float(sum(len(p["text"]) for p in passages[:K])),  # bigger chunks hold more facts: read with it
    }


def score_answer(q: Question, answer: str, sources: list[dict], embed_sim: float | None,
                 grounding: dict | None = None) -> dict[str, float | None]:
    """Answer metrics; overlap and citation scores only for answerable questions, refusal for all.

    Example: a refusal 'The sources do not cover this.' to an out-of-scope question -> {'refused': 1.0, ...}.
    """
    cited = m.cited_indices(answer)
    doc_by_index = {s.get("index", i): s.get("doc_id", "") for i, s in enumerate(sources, 1)}  # [n] is `index`, not the position
    lang = m.language_of(answer)
    out: dict[str, float | None] = dict.fromkeys(ANSWER_KEYS)
    out["refused"] = 1.0 if m.is_refusal(answer) or (grounding or {}).get("mode") == "refused" else 0.0
    out["language_match"] = None if lang is None else float(lang == q.language)
    out["citation_validity"] = m.citation_validity(cited, set(doc_by_index))
    if not q.refuse:
        out["fact_recall"] = m.fact_recall(list(q.facts), answer)
        out["token_f1"] = m.token_f1(answer, q.reference)
        out["rouge_l"] = m.rouge_l(answer, q.reference)
        out["embed_sim"] = embed_sim
        out["citation_precision"] = m.citation_precision(cited, doc_by_index, set(q.gold_doc_ids))
        # Only answers that quote passages: does each quoted sentence hold something the question asks for?
        extractive = (grounding or {}).get("mode") == "extractive"
        out["quote_precision"] = m.quote_precision(list(q.facts), answer) if extractive else None
    return out
