"""Hybrid retrieval: dense search in Chroma and BM25, fused by reciprocal rank fusion, optionally reranked."""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import yaml

from ingest.embedder import Embedder
from ingest.keyword import KeywordIndex
from ingest.store import Store, open_collection

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


class Glossary:
    """Russian stems -> English terms, so Russian questions can reach English passages."""

    def __init__(self, path: Path):
        from ingest.keyword import tokenize

        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
        self.map: dict[str, str] = {}
        for ru, en in ((data or {}).get("terms") or {}).items():
            for stem in tokenize(str(ru)):
                self.map.setdefault(stem, str(en))

    def expand(self, query: str) -> str:
        """English terms for the Russian words of `query`. Example: 'Сколько параметров?' -> 'how many much parameters'."""
        from ingest.keyword import tokenize

        return " ".join(dict.fromkeys(self.map[t] for t in tokenize(query) if t in self.map))


def is_russian(text: str) -> bool:
    return len(re.findall(r"[а-яёА-ЯЁ]", text)) > len(re.findall(r"[A-Za-z]", text)) / 2


class Retriever:
    """Reads the index built by the ingest room; notices re-ingests through the BM25 index's fingerprint."""

    def __init__(self, settings, embedder: Embedder | None = None):
        self.settings = settings
        self.embedder = embedder or Embedder(settings.ingest.embed_model, settings.ingest.device, settings.ingest.embed_batch_size)
        self.store = Store(open_collection(settings))
        self.keyword = KeywordIndex(settings.data_dir / "bm25")
        self._meta: dict[str, dict] = {}
        self._texts: dict[str, str] = {}
        self._fingerprint: str | None = None
        self._lock = threading.Lock()
        self._reranker = None
        self.glossary = Glossary(settings.path(settings.retrieval.glossary))

    def refresh(self) -> None:
        """Reload the chunk table and BM25 index when the index changed since the last query."""
        self.keyword.load()
        if self.keyword.fingerprint == self._fingerprint and self._meta:
            return
        with self._lock:
            got = self.store.collection.get(include=["documents", "metadatas"])
            self._meta = dict(zip(got["ids"], got["metadatas"]))
            self._texts = dict(zip(got["ids"], got["documents"]))
            self._fingerprint = self.keyword.fingerprint

    def _allowed(self, opts: RetrievalOptions) -> set[str] | None:
        if not opts.doc_ids and not opts.language:
            return None
        return {
            cid for cid, m in self._meta.items()
            if (not opts.doc_ids or m.get("doc_id") in opts.doc_ids) and (not opts.language or m.get("language") == opts.language)
        }

    def dense(self, query: str, k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        if allowed is not None and not allowed:
            return []
        vec = self.embedder.encode([query])[0]
        # Chroma narrows by document; the language filter is applied on our side through `allowed`.
        where = {"doc_id": {"$in": sorted({self._meta[c]["doc_id"] for c in allowed})}} if allowed else None
        n = min(k if allowed is None else max(k, len(allowed)), max(1, len(self._meta)))
        res = self.store.collection.query(query_embeddings=[vec.tolist()], n_results=n, where=where, include=["distances"])
        hits = [(cid, 1.0 - float(d)) for cid, d in zip(res["ids"][0], res["distances"][0])]
        return [(c, s) for c, s in hits if allowed is None or c in allowed][:k]

    def bm25(self, query: str, k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        return self.keyword.search(query, k, allowed)

    def retrieve(self, query: str, opts: RetrievalOptions | None = None) -> list[Passage]:
        opts = opts or RetrievalOptions(self.settings.retrieval.mode, self.settings.retrieval.top_k, self.settings.retrieval.rerank)
        self.refresh()
        allowed = self._allowed(opts)
        cand = max(self.settings.retrieval.candidates, opts.top_k)
        ru = is_russian(query)
        extra = self.glossary.expand(query) if ru else ""
        # Russian: the English-only embedder sees the Latin words plus the glossary's English terms.
        dense_query = " ".join(re.findall(r"[A-Za-z0-9][\w.+/()^-]*", query) + [extra]) if ru else query
        keyword_query = f"{query} {extra}"
        if opts.mode == "dense":
            scored = self.dense(dense_query, cand, allowed)
        elif opts.mode == "bm25":
            scored = self.bm25(keyword_query, cand, allowed)
        else:
            rt = self.settings.retrieval
            fused = rrf([[c for c, _ in self.dense(dense_query, cand, allowed)], [c for c, _ in self.bm25(keyword_query, cand, allowed)]],
                        rt.rrf_k, [rt.dense_weight_ru if ru else rt.dense_weight, 1.0])
            scored = sorted(fused.items(), key=lambda kv: -kv[1])
        if opts.rerank and scored:
            scored = self._rerank(query, scored[:cand])
        return [self._passage(cid, score) for cid, score in scored[: opts.top_k] if cid in self._meta]

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
