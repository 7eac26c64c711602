"""Hybrid retrieval: dense search and BM25, fused by reciprocal rank fusion, routed to the documents a question
names, diversified across sections, optionally reranked. Each stage is timed."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from ingest.embedder import Embedder
from ingest.glossary import Glossary
from ingest.keyword import KeywordIndex
from ingest.lock import index_lock
from ingest.store import Store, open_collection, reopen_collection

from .routing import Router, cap_sections, mmr

Mode = Literal["hybrid", "dense", "bm25"]


@dataclass
class Passage:
    id: str
    doc_id: str
    title: str
    section: str
    source: str
    text: str
    score: float
    language: str = ""
    kind: str = ""

    def as_source(self, index: int) -> dict:
        """The sources contract: {index, doc_id, title, section, source, text, score}."""
        d = asdict(self)
        return {"index": index, **{k: d[k] for k in ("doc_id", "title", "section", "source", "text")}, "score": round(self.score, 6)}


@dataclass
class RetrievalOptions:
    mode: Mode = "hybrid"
    top_k: int = 5
    rerank: bool = False
    doc_ids: list[str] | None = None
    language: str | None = None


def rrf(rankings: list[list[str]], k: int = 60, weights: list[float] | None = None) -> dict[str, float]:
    """Weighted reciprocal rank fusion. Example: [['a', 'b'], ['b']] with k=60 -> {'a': 1/61, 'b': 1/62 + 1/61}."""
    scores: dict[str, float] = {}
    for ranking, w in zip(rankings, weights or [1.0] * len(rankings)):
        for rank, cid in enumerate(ranking, 1):
            scores[cid] = scores.get(cid, 0.0) + w / (k + rank)
    return scores


class _Clock:
    """Laps into a timings dict (or nowhere). Example: lap('dense_ms') records the ms since the previous lap."""

    def __init__(self, into: dict | None):
        self.into, self.t = into, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.into is not None:
            self.into[name] = round((now - self.t) * 1000, 3)
        self.t = now


def is_russian(text: str) -> bool:
    return len(re.findall(r"[а-яёА-ЯЁ]", text)) > len(re.findall(r"[A-Za-z]", text)) / 2


class Retriever:
    """Reads the index built by the ingest room; notices re-ingests through the BM25 index's fingerprint.

    The chunk vectors are held in memory as one matrix: at this corpus size an exact dot product is faster than
    a call into Chroma, and a search narrowed to some documents costs nothing more.
    """

    def __init__(self, settings, embedder: Embedder | None = None):
        self.settings = settings
        self.embedder = embedder or Embedder(settings.ingest.embed_model, settings.ingest.device, settings.ingest.embed_batch_size)
        self.store = Store(open_collection(settings))
        self.keyword = KeywordIndex(settings.data_dir / "bm25")
        self._meta: dict[str, dict] = {}
        self._texts: dict[str, str] = {}
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._matrix = np.zeros((0, 1), dtype=np.float32)
        self._fingerprint: str | None = None
        self._lock = threading.Lock()
        self._reranker = None
        self.glossary = Glossary.load(settings)
        self.router = Router({}, self.glossary)

    def refresh(self) -> None:
        """Reload the chunk table, vectors, glossary and routes when the index changed since the last query."""
        self.keyword.load()
        if self.keyword.fingerprint == self._fingerprint and self._meta:
            return
        with self._lock:
            try:
                got = self.store.collection.get(include=["documents", "metadatas", "embeddings"])
            except Exception:  # chromadb.errors.InternalError: another process wrote; see reopen_collection
                with index_lock(self.settings):
                    self.store = Store(reopen_collection(self.settings))
                    got = self.store.collection.get(include=["documents", "metadatas", "embeddings"])
            ids = list(got["ids"])
            meta, texts = dict(zip(ids, got["metadatas"])), dict(zip(ids, got["documents"]))
            matrix = np.asarray(got["embeddings"], dtype=np.float32) if ids else np.zeros((0, 1), dtype=np.float32)
            glossary = Glossary.load(self.settings)
            router = Router(meta, glossary, texts)
            # Swapped together, after everything is built: a query running meanwhile sees one index or the other.
            self._ids, self._row, self._meta, self._texts, self._matrix = ids, {c: i for i, c in enumerate(ids)}, meta, texts, matrix
            self.glossary, self.router, self._fingerprint = glossary, router, self.keyword.fingerprint

    def _allowed(self, opts: RetrievalOptions) -> set[str] | None:
        if not opts.doc_ids and not opts.language:
            return None
        return {
            cid for cid, m in self._meta.items()
            if (not opts.doc_ids or m.get("doc_id") in opts.doc_ids) and (not opts.language or m.get("language") == opts.language)
        }

    def dense(self, vec: np.ndarray, k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        """(chunk id, cosine) best first for a query vector, over `allowed` ids when given."""
        if not self._ids or (allowed is not None and not allowed):
            return []
        if allowed is None:
            rows, scores = np.arange(len(self._ids)), self._matrix @ vec
        else:
            rows = np.fromiter((self._row[c] for c in allowed if c in self._row), dtype=np.int64)
            scores = self._matrix[rows] @ vec
        top = np.argsort(-scores)[:k] if len(scores) <= k else np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        return [(self._ids[int(rows[i])], float(scores[i])) for i in top]

    def bm25(self, query: str, k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        return self.keyword.search(query, k, allowed)

    def retrieve(self, query: str, opts: RetrievalOptions | None = None, timings: dict | None = None) -> list[Passage]:
        """The top-k passages; `timings` (when given) receives each stage's milliseconds."""
        rt = self.settings.retrieval
        opts = opts or RetrievalOptions(rt.mode, rt.top_k, rt.rerank)
        clock = _Clock(timings)
        self.refresh()
        allowed = self._allowed(opts)
        cand = max(rt.candidates, opts.top_k)
        ru = is_russian(query)
        extra = self.glossary.expand(query) if ru else ""
        # Russian: the English-only embedder sees the Latin words plus the glossary's English terms.
        dense_query = " ".join(re.findall(r"[A-Za-z0-9][\w.+/()^-]*", query) + [extra]) if ru else query
        keyword_query = f"{query} {extra}"
        named = set() if opts.doc_ids else self.router.named(query)
        # A question that names a section ('the conclusion', 'интеллект-карта') is routed to it, not to the whole document.
        sections = set() if opts.doc_ids else self.router.named_sections(query)
        routed_ids = self._in_sections(sections, allowed) if sections else self._in_docs(named, allowed) if named else set()
        clock.lap("prepare_ms")
        dense_hits: list[tuple[str, float]] = []
        routed_dense: list[tuple[str, float]] = []
        if opts.mode != "bm25":
            vec = self.embedder.encode([dense_query])[0]
            clock.lap("embed_ms")
            dense_hits = self.dense(vec, cand, allowed)
            if routed_ids:
                routed_dense = self.dense(vec, cand, routed_ids)
            clock.lap("dense_ms")
        keyword_hits: list[tuple[str, float]] = []
        routed_keyword: list[tuple[str, float]] = []
        if opts.mode != "dense":
            keyword_hits = self.bm25(keyword_query, cand, allowed)
            if routed_ids:
                routed_keyword = self.bm25(keyword_query, cand, routed_ids)
            clock.lap("bm25_ms")
        if opts.mode == "dense":
            lists, weights = [dense_hits, routed_dense], [1.0, rt.route_weight]
        elif opts.mode == "bm25":
            lists, weights = [keyword_hits, routed_keyword], [1.0, rt.route_weight]
        else:
            w = rt.dense_weight_ru if ru else rt.dense_weight
            routed = sorted(rrf([[c for c, _ in routed_dense], [c for c, _ in routed_keyword]], rt.rrf_k, [w, 1.0]).items(),
                            key=lambda kv: -kv[1])
            lists, weights = [dense_hits, keyword_hits, routed], [w, 1.0, rt.route_weight]
        fused = rrf([[c for c, _ in hits] for hits in lists], rt.rrf_k, weights)
        scored = sorted(fused.items(), key=lambda kv: -kv[1])
        if opts.rerank and scored:
            scored = self._rerank(query, scored[:cand])
        scores = dict(scored)
        ranked = [c for c, _ in scored if c in self._meta]
        if rt.diversity == "cap":
            top = cap_sections(ranked, self._meta, opts.top_k, rt.sections_per_doc, named | set(opts.doc_ids or []))
        elif rt.diversity == "mmr":
            top = mmr(ranked[:cand], scores, {c: self._matrix[self._row[c]] for c in ranked[:cand]}, opts.top_k, rt.mmr_lambda)
        else:
            top = ranked[: opts.top_k]
        clock.lap("fusion_ms")
        return [self._passage(cid, scores[cid]) for cid in top]

    def _in_docs(self, docs: set[str], allowed: set[str] | None) -> set[str]:
        return {c for c, m in self._meta.items() if m.get("doc_id") in docs and (allowed is None or c in allowed)}

    def _in_sections(self, sections: set[tuple[str, str]], allowed: set[str] | None) -> set[str]:
        ids = set().union(*(self.router.members.get(s, set()) for s in sections))
        return ids if allowed is None else ids & allowed

    def _rerank(self, query: str, scored: list[tuple[str, float]]) -> list[tuple[str, float]]:
        from .errors import BadRequest

        if not self.settings.retrieval.reranker:
            raise BadRequest("rerank asked for, but no reranker is configured (retrieval.reranker)")
        if self._reranker is None:
            from sentence_transformers import CrossEncoder

            self._reranker = CrossEncoder(self.settings.retrieval.reranker, device=self.settings.ingest.device, local_files_only=True)
        ids = [c for c, _ in scored]
        scores = self._reranker.predict([(query, self._texts[c]) for c in ids], show_progress_bar=False)
        return sorted(zip(ids, map(float, scores)), key=lambda kv: -kv[1])

    def _passage(self, cid: str, score: float) -> Passage:
        m = self._meta[cid]
        return Passage(cid, m.get("doc_id", ""), m.get("title", ""), m.get("section") or "", m.get("source", ""),
                       self._texts[cid], score, m.get("language", ""), m.get("kind", ""))

    def search_query(self, query: str) -> str:
        """The query the grounder weighs sentences by: a Russian one carries its English glossary terms too."""
        return f"{query} {self.glossary.expand(query)}" if is_russian(query) else query

    def chunk_count(self) -> int:
        self.refresh()
        return len(self._meta)
