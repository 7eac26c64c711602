"""LLM engines behind one interface; `create_engine(settings)` picks one by `llm.engine`."""

from .base import READY, Engine, GenerationParams, Readiness, bundled_gguf, languages_written, resolve_model


def create_engine(settings, adapter: bool = False) -> Engine:
    """The configured engine. With adapter=True, the one that serves llm.adapter (atlas-rag-lora)."""
    kind = settings.llm.engine
    if kind == "llamacpp":
        from .llamacpp import LlamaCppEngine

        return LlamaCppEngine(settings, adapter=adapter)
    if kind == "openai":
        from .openai import OpenAIEngine

        return OpenAIEngine(settings, adapter=adapter)
    if kind == "vllm":
        from .vllm import VLLMEngine

        return VLLMEngine(settings, adapter=adapter)
    if kind == "transformers":
        from .hf import TransformersEngine

        return TransformersEngine(settings, adapter=adapter)
    raise ValueError(f"unknown llm.engine {kind!r}")


__all__ = ["READY", "Engine", "GenerationParams", "Readiness", "bundled_gguf", "create_engine", "languages_written",
           "resolve_model"]
