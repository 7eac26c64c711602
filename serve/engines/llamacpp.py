"""The embedded default: a GGUF model run in-process by llama-cpp-python on the CPU."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

from ..errors import EngineUnavailable
from .base import GenerationParams, resolve_model


def chat_handler(base):
    """llama.cpp's chat format for a base whose GGUF carries no template (serve/bases.py gives it); None: the GGUF's."""
    if base is None or not base.chat_template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(base.chat_template, eos_token=base.end_of_turn or "<eos>", bos_token="<bos>",
                               add_generation_prompt=True).to_chat_handler()


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
        try:
            self.llm = Llama(
                model_path=str(self.model_path), n_ctx=llm.n_ctx, n_threads=llm.n_threads, lora_path=lora,
                verbose=False, seed=0, chat_handler=chat_handler(base),
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise EngineUnavailable(f"llamacpp engine: cannot load {self.model_path}: {e}") from e
        self.n_ctx = self.llm.n_ctx()
        self._lock = threading.Lock()  # one model, one request at a time: others queue here

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream(self, messages: list[dict], params: GenerationParams) -> Iterator[str]:
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
        return True

    def close(self) -> None:
        self.llm.close() if hasattr(self.llm, "close") else None
