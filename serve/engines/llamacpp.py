"""The embedded default: a GGUF model run in-process by llama-cpp-python on the CPU."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Generator

from ..errors import EngineUnavailable
from .base import READY, GenerationParams, Readiness, bundled_gguf


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, settings, adapter: bool = False):
        from llama_cpp import Llama

        llm = settings.llm
        self.model_path = bundled_gguf() if llm.model == "bundled" else Path(settings.path(llm.model))
        lora = None
        if adapter:
            from finetune import gguf_adapter, validate_adapter

            path = settings.path(llm.adapter)
            validate_adapter(path, self.model_path)  # AdapterError: missing files, wrong base, not safetensors
            lora = str(gguf_adapter(path, self.model_path))
        try:
            self.llm = Llama(
                model_path=str(self.model_path), n_ctx=llm.n_ctx, n_threads=llm.n_threads, lora_path=lora,
                verbose=False, seed=0,
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise EngineUnavailable(f"llamacpp engine: cannot load {self.model_path}: {e}") from e
        self.n_ctx = self.llm.n_ctx()
        self._lock = threading.Lock()  # one model, one request at a time: others queue here

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream(self, messages: list[dict], params: GenerationParams) -> Generator[str, None, str]:
        finish = None
        with self._lock:
            if self.llm is None:
                raise EngineUnavailable("llamacpp engine: the model is closed")
            self.llm.reset()
            for chunk in self.llm.create_chat_completion(
                messages=messages, stream=True, max_tokens=params.max_tokens, temperature=params.temperature,
                top_p=params.top_p, stop=params.stop or None, repeat_penalty=params.repeat_penalty, seed=0,
            ):
                if params.cancel.is_set():  # the caller disconnected: leaving the loop stops llama.cpp
                    break
                finish = chunk["choices"][0].get("finish_reason") or finish
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    yield delta
        return finish or "stop"

    def ready(self) -> Readiness:
        return READY if self.llm is not None else Readiness(False, "llamacpp engine: the model is closed")

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None and hasattr(llm, "close"):
            llm.close()
