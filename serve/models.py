"""The model registry: each name served by /v1/models is one entry (retrieval on/off, adapter on/off)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    retrieval: bool
    adapter: bool
    description: str


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("atlas-rag", True, False, "retrieval over the corpus + the base model"),
        ModelSpec("atlas-base", False, False, "closed-book: the base model alone"),
        ModelSpec("atlas-rag-lora", True, True, "retrieval + the base model with the LoRA adapter (llm.adapter)"),
    )
}
