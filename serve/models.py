"""The model registry: each name served by /v1/models is one entry (retrieval on/off, adapter on/off, which base)."""

from __future__ import annotations

import re
from dataclasses import dataclass

LORA = "atlas-rag-lora"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    retrieval: bool
    adapter: bool
    description: str
    base: str | None = None  # the llm.adapters key (the base model it runs on); None: llm.model, with llm.adapter

    @property
    def slot(self) -> bool | str:
        """Which engine answers: False the base model, True llm.adapter, or the base name of an llm.adapters entry."""
        return self.base if self.base is not None else self.adapter


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("atlas-rag", True, False, "retrieval over the corpus + the base model"),
        ModelSpec("atlas-base", False, False, "closed-book: the base model alone"),
        ModelSpec(LORA, True, True, "retrieval + the base model with the LoRA adapter (llm.adapter)"),
    )
}


def lora_spec(base: str) -> ModelSpec:
    """The model that serves llm.adapters[base]. Example: 'gemma3-270m' -> atlas-rag-lora-gemma3-270m;
    a GGUF path '/m/gemma-3-270m-q4_k_m.gguf' -> atlas-rag-lora-gemma-3-270m-q4_k_m."""
    stem = re.sub(r"\.gguf$", "", base.rstrip("/").split("/")[-1], flags=re.I).lower()
    return ModelSpec(f"{LORA}-{stem}", True, True, f"retrieval + {base} with its LoRA adapter (llm.adapters)", base)


def configured(settings) -> dict[str, ModelSpec]:
    """Every model these settings serve when all their adapters load, in /v1/models order."""
    out = {n: s for n, s in MODELS.items() if not s.adapter or settings.llm.adapter}
    for base in settings.llm.adapters:
        spec = lora_spec(base)
        out[spec.name] = spec
    return out


def adapter_folders(settings) -> dict:
    """Model name -> the adapter folder it serves. Example: llm.adapter 'runs/a/adapter', llm.adapters
    {'gemma3-270m': 'runs/b/adapter'} -> {'atlas-rag-lora': .../runs/a/adapter, 'atlas-rag-lora-gemma3-270m': .../runs/b/adapter}."""
    llm = settings.llm
    out = {LORA: settings.path(llm.adapter)} if llm.adapter else {}
    return out | {lora_spec(base).name: settings.path(folder) for base, folder in llm.adapters.items()}
