"""The model registry: each name served by /v1/models is one entry (retrieval on/off, adapter on/off, which base)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .bases import DEFAULT_LORA, lora_models
from .errors import EngineUnavailable

LORA = DEFAULT_LORA


@dataclass(frozen=True)
class ModelSpec:
    name: str
    retrieval: bool
    adapter: bool
    description: str
    base: str | None = None  # the base an atlas-rag-lora-<base> model runs on; None: llm.model
    folder: Path | None = None  # its adapter folder

    @property
    def slot(self) -> bool | str:
        """Which engine answers: False the base model, True the default adapter, or another adapter's model id."""
        return self.name if self.base is not None else self.adapter


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("atlas-rag", True, False, "retrieval over the corpus + the base model"),
        ModelSpec("atlas-base", False, False, "closed-book: the base model alone"),
    )
}


def adapter_specs(llm) -> dict[str, ModelSpec]:
    """atlas-rag-lora (the adapter for llm.model's base) and atlas-rag-lora-<base> for the other llm.adapters entries.
    Raises EngineUnavailable when the adapter settings name an unknown base or two default adapters."""
    return {name: ModelSpec(name, True, True, f"retrieval + {base or llm.model} with the LoRA adapter {folder}",
                            None if name == LORA else base, folder)
            for name, (base, folder) in lora_models(llm).items()}


def configured(settings) -> dict[str, ModelSpec]:
    """Every model these settings serve when all their adapters load, in /v1/models order (without the adapters when
    their settings are inconsistent: RagEngine.load_adapter says why)."""
    try:
        return MODELS | adapter_specs(settings.llm)
    except EngineUnavailable:
        return dict(MODELS)


def offered(settings, models: list[str]) -> list[str]:
    """The models in the order the UI offers them: serve.default_model (the best measured) first when it is served.

    Example: default 'atlas-rag-lora-gemma3', ['atlas-rag', 'atlas-base', 'atlas-rag-lora-gemma3'] ->
    ['atlas-rag-lora-gemma3', 'atlas-rag', 'atlas-base'].
    """
    first = settings.serve.default_model
    return [first] + [m for m in models if m != first] if first in models else list(models)
