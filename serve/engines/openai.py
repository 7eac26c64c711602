"""Any OpenAI-compatible endpoint (vLLM, llama.cpp's server, Ollama, a hosted API) by llm.base_url."""

from __future__ import annotations

from typing import Iterator

from ..errors import EngineUnavailable
from .base import GenerationParams


class OpenAIEngine:
    name = "openai"

    def __init__(self, settings, adapter: bool = False, base_url: str | None = None, model: str | None = None):
        import openai

        llm = settings.llm
        self.base_url = base_url or llm.base_url
        if not self.base_url:
            raise EngineUnavailable("openai engine: set llm.base_url (e.g. http://127.0.0.1:8000/v1)")
        self.model = "atlas-rag-lora" if adapter else (model or llm.model)
        self.n_ctx = llm.n_ctx
        self.client = openai.OpenAI(base_url=self.base_url, api_key=llm.api_key, timeout=llm.timeout_s, max_retries=0)
        self._errors = (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError)
        self._openai = openai

    def count_tokens(self, text: str) -> int:
        # The remote tokenizer is unknown; ~3 characters a token errs on the safe side for the budget.
        return len(text) // 3 + 1

    def stream(self, messages: list[dict], params: GenerationParams) -> Iterator[str]:
        try:
            # `with`: a caller that stops reading closes the request, and the server stops generating.
            with self.client.chat.completions.create(
                model=self.model, messages=messages, stream=True, max_tokens=params.max_tokens,
                temperature=params.temperature, top_p=params.top_p, stop=params.stop or None,
                extra_body={"repeat_penalty": params.repeat_penalty, "repetition_penalty": params.repeat_penalty},
            ) as stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
        except self._errors as e:
            raise EngineUnavailable(f"openai engine at {self.base_url} is unreachable: {e}") from e
        except self._openai.APIStatusError as e:
            raise EngineUnavailable(f"openai engine at {self.base_url} answered {e.status_code}: {e.message}") from e

    def ready(self) -> bool:
        try:
            self.client.with_options(timeout=5.0).models.list()
            return True
        except self._openai.OpenAIError:
            return False

    def close(self) -> None:
        self.client.close()
