"""The embedded default: a GGUF model run by llama-cpp-python on the CPU, in a child process unless llm.isolate is off."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

from ..errors import EngineUnavailable
from .base import GenerationParams, resolve_model
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
            from finetune import gguf_adapter, validate_adapter

            path = settings.path(llm.adapter)
            validate_adapter(path, self.model_path)  # AdapterError: missing files, wrong base, not safetensors
            lora = str(gguf_adapter(path, self.model_path))
        self.process = None
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

    def stream(self, messages: list[dict], params: GenerationParams) -> Iterator[str]:
        if self.process:
            yield from self.process.stream(messages, params)
            return
        with self._lock:
            self.llm.reset()
            for chunk in self.llm.create_chat_completion(
                messages=messages, stream=True, max_tokens=params.max_tokens, temperature=params.temperature,
                top_p=params.top_p, stop=params.stop or None, repeat_penalty=params.repeat_penalty, seed=0,
            ):
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    yield delta

    def ready(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        """Why the engine cannot answer now (its child process died, and how), or None."""
        return self.process.check() if self.process else None

    def close(self) -> None:
        if self.process:
            self.process.close()
        elif hasattr(self.llm, "close"):
            self.llm.close()
