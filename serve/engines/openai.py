"""Any OpenAI-compatible endpoint (vLLM, llama.cpp's server, Ollama, a hosted API) by llm.base_url."""

from __future__ import annotations

import threading
import time
from typing import Generator

from ..errors import ContextOverflow, EngineUnavailable, UpstreamRejected
from .base import READY, GenerationParams, Readiness

READY_TIMEOUT_S = 2.0  # GET /models must answer within this
READY_TTL_S = 5.0  # health checks within this reuse the last answer


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
        self._ready: tuple[float, Readiness] | None = None
        self._ready_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        # The remote tokenizer is unknown; ~3 characters a token errs on the safe side for the budget.
        return len(text) // 3 + 1

    def stream(self, messages: list[dict], params: GenerationParams) -> Generator[str, None, str]:
        finish = None
        try:
            # `with`: a caller that stops reading closes the request, and the server stops generating.
            with self.client.chat.completions.create(
                model=self.model, messages=messages, stream=True, max_tokens=params.max_tokens,
                temperature=params.temperature, top_p=params.top_p, stop=params.stop or None, seed=params.seed,
                extra_body={"repeat_penalty": params.repeat_penalty, "repetition_penalty": params.repeat_penalty},
            ) as stream:
                for chunk in stream:
                    if params.cancel.is_set():
                        break
                    if not chunk.choices:
                        continue
                    finish = chunk.choices[0].finish_reason or finish
                    if chunk.choices[0].delta and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
        except self._errors as e:
            raise EngineUnavailable(f"openai engine at {self.base_url} is unreachable: {e}") from e
        except self._openai.APIStatusError as e:
            raise self._status_error(e) from e
        if finish is None and not params.cancel.is_set():
            # e.g. llama.cpp's server refuses a too-long streamed request with a 200 and no events
            raise EngineUnavailable(f"openai engine at {self.base_url} ended the stream without an answer "
                                    "(no finish_reason); its log says why")
        return finish

    def _status_error(self, e) -> Exception:
        """A 4xx is the request's fault and stays a 4xx (context too long -> 400); anything else means the engine failed."""
        said = f"openai engine at {self.base_url} answered {e.status_code}: {e.message}"
        if not 400 <= e.status_code < 500 or e.status_code in (401, 403, 404):
            return EngineUnavailable(said)  # our key or model name is wrong: the server is misconfigured, not the caller
        body = e.body if isinstance(e.body, dict) else {}
        code = str((body.get("error") if isinstance(body.get("error"), dict) else body).get("code") or "")
        if code == "context_length_exceeded" or "context" in str(e.message).lower():
            return ContextOverflow(said)
        return UpstreamRejected(said, e.status_code, code or None)

    def ready(self) -> Readiness:
        """GET /models answers within 2 s; the answer is reused for 5 s, so a busy /health costs the remote little."""
        with self._ready_lock:
            if self._ready and time.monotonic() - self._ready[0] < READY_TTL_S:
                return self._ready[1]
            try:
                self.client.with_options(timeout=READY_TIMEOUT_S).models.list()
                result = READY
            except self._openai.APIStatusError as e:
                result = Readiness(False, f"{self.name} engine at {self.base_url}: GET /models answered {e.status_code}")
            except self._openai.OpenAIError as e:
                result = Readiness(False, f"{self.name} engine at {self.base_url} is unreachable: {e}")
            self._ready = (time.monotonic(), result)
            return result

    def close(self) -> None:
        self.client.close()
