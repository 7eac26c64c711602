"""The advisor's HTTP routes: POST /v1/advise (walk the atlas's decision chart) and POST /v1/memory (the calculator)."""

from __future__ import annotations

from typing import Callable, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from .advisor import Advisor
from .memory import BYTES, METHODS, estimate, model_from
from .recommend import Recommender
from .retrieval import Retriever
from .situation import infer


class AdviseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answers: list[str] = Field(default_factory=list, max_length=64)
    language: Literal["ru", "en"] = "en"
    situation: str | None = Field(None, max_length=4000)


class ModelDims(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: int = Field(ge=1, le=1000)
    hidden: int = Field(ge=1, le=1_000_000)
    vocab: int = Field(ge=1, le=10_000_000)
    ffn: int | None = Field(None, ge=1)
    heads: int | None = Field(None, ge=1)
    kv_heads: int | None = Field(None, ge=1)
    gated: bool = False


class MemoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | ModelDims
    method: Literal[METHODS]  # type: ignore[valid-type]
    precision: Literal[tuple(BYTES)] = "bf16"  # type: ignore[valid-type]
    batch_size: int = Field(1, ge=1, le=4096)
    seq_len: int = Field(512, ge=1, le=1_048_576)
    lora_rank: int = Field(16, ge=1, le=4096)
    lora_modules: list[str] | None = None
    checkpointing: bool = True
    adam_bytes: Literal[1, 2, 4] = 4


def advise(advisor: Advisor, retriever: Callable[[], Retriever], answers: list[str], language: str,
           situation: str | None = None) -> dict:
    """One stateless step of the walk: the next question, or the method with its cited explanation.

    `retriever` is called only when a method is reached: a question needs no index.
    """
    inferred = infer(advisor, situation) if situation else {}
    walk = advisor.walk(answers, language, inferred)
    out = {"done": walk.done, "path": [s.as_dict(language) for s in walk.path]}
    if situation is not None:
        out["inferred"] = [{"id": s.id, "answer": s.answer, "from": s.inferred_from} for s in walk.path if s.inferred_from]
    if not walk.done:
        out["question"] = {"id": walk.node, "text": advisor.text(walk.node, language)}
        return out
    out["leaf"] = {"id": walk.node, "text": advisor.text(walk.node, language)}
    out.update(Recommender(advisor, retriever()).recommend(walk, language))
    return out


def memory(req: MemoryRequest) -> dict:
    m = model_from(req.model) if isinstance(req.model, str) else model_from(None, **req.model.model_dump())
    return estimate(m, req.method, req.precision, req.batch_size, req.seq_len, req.lora_rank, req.lora_modules,
                    req.checkpointing, req.adam_bytes).as_dict()


def router(get_rag) -> APIRouter:
    """Routes bound to the app's own `get_rag`, so they share its readiness rule; the app adds its key rule."""
    r = APIRouter()

    @r.post("/v1/advise")
    def advise_route(req: AdviseRequest, request: Request):
        advisor = Advisor.load(request.app.state.ftatlas.settings)
        return advise(advisor, lambda: get_rag(request).retriever, req.answers, req.language, req.situation)

    @r.post("/v1/memory")
    def memory_route(req: MemoryRequest):
        return memory(req)

    return r
