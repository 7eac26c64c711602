"""The configurations an eval compares, chosen per request by model name and the `retrieval` object."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EvalError

BASELINE = "llamaindex-stock"


@dataclass(frozen=True)
class Config:
    name: str
    model: str
    retrieval: dict | None  # the request's `retrieval` object; None = the model's own default (closed-book for atlas-base)
    note: str = ""
    stock: bool = False  # passages from the LlamaIndex stock pipeline instead of ours

    @property
    def retrieves(self) -> bool:
        return self.retrieval is not None or self.stock


def all_configs(settings, models: set[str]) -> list[Config]:
    """Every configuration this set-up can run: the reranker row needs retrieval.reranker, each LoRA row its served
    adapter (atlas-rag-lora for llm.adapter, atlas-rag-lora-<base> for each llm.adapters entry).

    Example: no reranker, models {'atlas-base', 'atlas-rag'} -> atlas-base, atlas-rag-dense, atlas-rag-bm25, atlas-rag,
    llamaindex-stock.
    """
    from serve.models import configured

    out = [
        Config("atlas-base", "atlas-base", None, "closed-book"),
        Config("atlas-rag-dense", "atlas-rag", {"mode": "dense", "rerank": False}, "dense only"),
        Config("atlas-rag-bm25", "atlas-rag", {"mode": "bm25", "rerank": False}, "BM25 only"),
        Config("atlas-rag", "atlas-rag", {"mode": "hybrid", "rerank": False}, "hybrid"),
    ]
    if settings.retrieval.reranker:
        out.append(Config("atlas-rag-rerank", "atlas-rag", {"mode": "hybrid", "rerank": True}, "hybrid + reranker"))
    for name, spec in configured(settings).items():
        if spec.adapter and name in models:
            out.append(Config(name, name, {"mode": "hybrid", "rerank": False},
                              "hybrid + LoRA adapter" + (f" on {spec.base}" if spec.base else "")))
    out.append(Config(BASELINE, "atlas-rag", None, "LlamaIndex stock pipeline", stock=True))
    return out


def select(configs: list[Config], names: list[str] | None) -> list[Config]:
    """Keep the named configurations in the given order; EvalError naming any that cannot run here."""
    if not names:
        return configs
    known = {c.name: c for c in configs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EvalError(f"unknown or unavailable configurations {unknown}; available: {', '.join(known)}")
    return [known[n] for n in names]
