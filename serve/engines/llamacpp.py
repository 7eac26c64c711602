"""The embedded default: a GGUF model run by llama-cpp-python on the CPU, in a child process unless llm.isolate is off."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Generator

from ..errors import EngineUnavailable
from .base import READY, GenerationParams, Readiness, resolve_model
from .child import chat_handler


def chat_format(base) -> dict | None:
    """The chat template for a base whose GGUF carries none (serve/bases.py gives it); None: the GGUF's own."""
    if base is None or not base.chat_template:
        return None
    return {"template": base.chat_template, "eos": base.end_of_turn or "<eos>", "bos": "<bos>"}


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, settings, adapter: bool = False):
        from llama_cpp import Llama

        llm = settings.llm
        model, base = resolve_model(llm.model)
        self.model_path = Path(settings.path(model))
        lora = None
        if adapter:
            from ..adapter import validate_adapter
            from ..gguf_lora import gguf_adapter

            path = settings.path(llm.adapter)
            validate_adapter(path, self.model_path)  # AdapterError: missing files, wrong base, not safetensors
            lora = str(gguf_adapter(path, self.model_path))
        self.process, self.llm = None, None
        try:
            if llm.isolate:
                from .worker import ProcessLlama

                self.process = ProcessLlama(str(self.model_path), llm.n_ctx, llm.n_threads, lora, chat_format(base))
                self.n_ctx = self.process.n_ctx
                return
            self.llm = Llama(
                model_path=str(self.model_path), n_ctx=llm.n_ctx, n_threads=llm.n_threads, lora_path=lora,
                verbose=False, seed=0, chat_handler=chat_handler(chat_format(base)),
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise EngineUnavailable(f"llamacpp engine: cannot load {self.model_path}: {e}") from e
        self.n_ctx = self.llm.n_ctx()
        self._lock = threading.Lock()  # one model, one request at a time: others queue here

    def count_tokens(self, text: str) -> int:
        if self.process:
            return self.process.count_tokens(text)
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream(self, messages: list[dict], params: GenerationParams) -> Generator[str, None, str]:
        if self.process:
            return (yield from self.process.stream(messages, params))
        finish = None
        with self._lock:
            if self.llm is None:
                raise EngineUnavailable("llamacpp engine: the model is closed")
            self.llm.reset()
            for chunk in self.llm.create_chat_completion(
                messages=messages, stream=True, max_tokens=params.max_tokens, temperature=params.temperature,
                top_p=params.top_p, stop=params.stop or None, repeat_penalty=params.repeat_penalty, seed=params.seed,
            ):
                if params.cancel.is_set():  # the caller disconnected: leaving the loop stops llama.cpp
                    break
                finish = chunk["choices"][0].get("finish_reason") or finish
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    yield delta
        return finish or "stop"

    def ready(self) -> Readiness:
        why = self.problem()
        if why:
            return Readiness(False, why)
        if self.process is None and self.llm is None:
            return Readiness(False, "llamacpp engine: the model is closed")
        return READY

    def problem(self) -> str | None:
        """Why the engine cannot answer now (its child process died, and how), or None."""
        return self.process.check() if self.process else None

    def close(self) -> None:
        if self.process:
            self.process.close()
            return
        llm, self.llm = self.llm, None
        if llm is not None and hasattr(llm, "close"):
            llm.close()
