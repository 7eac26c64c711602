"""Runs the gold set through each configuration into per-question records; Ctrl-C stops it with the records so far."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tqdm import tqdm

from .backends import Backend, answer_text
from .configs import Config
from .gold import Question
from .metrics import cosine
from .scoring import NDCG_K, score_answer, score_retrieval


@dataclass
class Run:
    id: str
    backend: str
    configs: list[Config]
    questions: list[Question]
    answers: bool  # False: retrieval metrics only
    judge: str | None = None
    records: list[dict] = field(default_factory=list)
    status: str = "running"  # complete | interrupted
    started: float = field(default_factory=time.time)
    finished: float | None = None
    notes: list[str] = field(default_factory=list)


def source_summary(s: dict) -> dict:
    """A source without its text, for the JSON report. Example: {'index': 1, 'doc_id': 'lora', 'text': '…'} -> no 'text'."""
    return {k: s[k] for k in ("index", "doc_id", "section", "score") if k in s}


def evaluate(q: Question, cfg: Config, backend: Backend, *, baseline=None, embedder=None, judge=None,
             answers: bool = True, max_tokens: int = 160, temperature: float = 0.0) -> dict:
    """One question under one configuration -> a record of its answer, sources, scores and latency."""
    messages = q.messages()
    rec: dict = {"config": cfg.name, "model": cfg.model, "set": q.gold_set, "id": q.id, "language": q.language,
                 "category": q.category, "refuse": q.refuse, "question": q.question, "metrics": {}, "latency": {},
                 "error": None}
    try:
        passages = None
        t0 = time.perf_counter()
        if cfg.stock:
            passages = baseline.retrieve(backend.query(messages), NDCG_K)
        elif cfg.retrieval is not None and backend.retrieve is not None:
            passages = backend.retrieve(backend.query(messages), NDCG_K, cfg.retrieval)
        if passages is not None:
            rec["latency"]["retrieval_ms"] = (time.perf_counter() - t0) * 1000
        complete = baseline.complete if cfg.stock else backend.complete
        if answers and complete is not None:
            t0 = time.perf_counter()
            resp = complete(cfg.model, messages, max_tokens, temperature, cfg.retrieval)
            rec["latency"]["total_ms"] = (time.perf_counter() - t0) * 1000
            rec["latency"]["ttft_ms"] = resp.get("ttft_ms")
            answer, sources = answer_text(resp), resp.get("sources") or []
            if passages is None and cfg.retrieval is not None:
                passages = sources  # an endpoint without /v1/retrieve: rank what it returned
            sim = cosine(*embedder.encode([answer, q.reference])) if embedder is not None and answer and not q.refuse else None
            rec.update(answer=answer, sources=[source_summary(s) for s in sources], grounding=resp.get("grounding"))
            rec["metrics"].update(score_answer(q, answer, sources, sim, resp.get("grounding")))
            if judge is not None and answer and not q.refuse:
                try:
                    rec["metrics"].update(judge.score(q.question, answer, q.reference, [s.get("text", "") for s in sources], sim))
                except Exception as e:  # a failing judge loses its scores, not the run
                    rec["judge_error"] = f"{type(e).__name__}: {e}"
        if passages is not None:
            rec["retrieved"] = [source_summary(p) for p in passages]
            rec["metrics"].update(score_retrieval(q, passages))
    except Exception as e:  # one failing request is recorded; the other questions still run
        rec["error"] = f"{type(e).__name__}: {e}"
    return rec


def execute(run: Run, backend: Backend, *, baseline=None, embedder=None, judge=None, max_tokens: int = 160,
            temperature: float = 0.0, progress: bool = True) -> Run:
    """Fill run.records, configuration by configuration; on KeyboardInterrupt mark it interrupted and return."""
    bar = tqdm(total=len(run.configs) * len(run.questions), disable=not progress, unit="q", dynamic_ncols=True)
    try:
        for cfg in run.configs:
            bar.set_description(cfg.name)
            for q in run.questions:
                run.records.append(evaluate(q, cfg, backend, baseline=baseline, embedder=embedder, judge=judge,
                                            answers=run.answers, max_tokens=max_tokens, temperature=temperature))
                bar.update()
        run.status = "complete"
    except KeyboardInterrupt:
        run.status = "interrupted"
    finally:
        bar.close()
        run.finished = time.time()
    return run
