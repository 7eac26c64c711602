"""Where answers come from: the in-process RagEngine or any OpenAI-compatible endpoint, behind one small protocol."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import EvalError
from .gold import retrieval_query

# complete(model, messages, max_tokens, temperature, retrieval) -> the non-streaming chat.completion JSON plus
# "sources" and "grounding"; a streamed reply adds "ttft_ms".
Complete = Callable[[str, list[dict], int, float, "dict | None"], dict]
# retrieve(query, top_k, retrieval) -> ranked sources ({index, doc_id, title, section, source, text, score}).
Retrieve = Callable[[str, int, "dict | None"], list[dict]]


@dataclass
class Backend:
    name: str
    complete: Complete | None  # None: retrieval only
    retrieve: Retrieve | None  # None: the endpoint has no /v1/retrieve; rank metrics come from the answer's sources
    models: set[str] = field(default_factory=set)
    query: Callable[[list[dict]], str] = retrieval_query
    engine: object | None = None  # the in-process RagEngine, which the baseline answers through


def answer_text(response: dict) -> str:
    """The assistant's text of a chat.completion dict. Example: {'choices': [{'message': {'content': 'Hi'}}]} -> 'Hi'."""
    choices = response.get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content") or ""


def collect_stream(chunks: Iterable[dict], t0: float) -> dict:
    """chat.completion.chunk dicts -> one completion dict with `sources`, `grounding` and `ttft_ms` (from t0).

    Example: [{'sources': [s1], 'choices': [{'delta': {'role': 'assistant'}}]}, {'choices': [{'delta': {'content': 'Hi'}}]},
    {'grounding': g, 'choices': [...]}] -> {'choices': [{'message': {'content': 'Hi', ...}}], 'sources': [s1], 'grounding': g,
    'ttft_ms': <ms from t0 to 'Hi'>}.
    """
    ttft_ms, parts, sources, grounding = None, [], [], None
    for chunk in chunks:
        sources = chunk.get("sources") or sources
        grounding = chunk.get("grounding") or grounding
        choices = chunk.get("choices") or [{}]
        delta = (choices[0].get("delta") or {}).get("content")
        if delta:
            ttft_ms = ttft_ms if ttft_ms is not None else (time.perf_counter() - t0) * 1000
            parts.append(delta)
    return {"choices": [{"message": {"role": "assistant", "content": "".join(parts).strip()}}], "sources": sources,
            "grounding": grounding, "ttft_ms": ttft_ms}


def streamed(rag) -> Complete:
    """A RagEngine's `complete`, taken from its chunk stream so the time to the first token is measured too."""

    def complete(model: str, messages: list[dict], max_tokens: int, temperature: float, retrieval: dict | None) -> dict:
        t0 = time.perf_counter()
        return collect_stream(rag.stream_chunks(model, messages, max_tokens, temperature, retrieval), t0)

    return complete


def in_process(settings, embedder=None, answers: bool = True) -> Backend:
    """serve's RagEngine, streamed (for time to first token): its retriever, retrieval options and follow-up query.

    Its LLM loads with the first answer, so a retrieval-only backend never loads one.
    """
    from serve.rag import RagEngine
    from serve.retrieval import Retriever

    rag = RagEngine(settings, retriever=Retriever(settings, embedder))
    if rag.retriever.chunk_count() == 0:
        raise EvalError(f"the index in {settings.data_dir} is empty; run `ftatlas ingest` first")
    if answers:
        rag.load_adapter()  # a broken adapter drops atlas-rag-lora from the models, it does not stop the run

    def retrieve(query: str, top_k: int, retrieval: dict | None) -> list[dict]:
        opts = rag.retrieval_options({**(retrieval or {}), "top_k": top_k})
        return [p.as_source(i) for i, p in enumerate(rag.retriever.retrieve(query, opts), 1)]

    return Backend("in-process", streamed(rag) if answers else None, retrieve, set(rag.models()), rag.retrieval_query, rag)


def base_url(endpoint: str) -> str:
    """The …/v1 base an OpenAI client wants. Example: 'http://h:7860/' -> 'http://h:7860/v1'; '…/v1' stays."""
    url = endpoint.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def openai_client(endpoint: str, api_key: str | None, timeout_s: float):
    from openai import OpenAI

    return OpenAI(base_url=base_url(endpoint), api_key=api_key or "not-needed", timeout=timeout_s, max_retries=0)


def list_models(client, endpoint: str) -> list[str]:
    """Model ids the endpoint serves; EvalError when it cannot be reached."""
    import openai

    try:
        return [m.id for m in client.models.list()]
    except openai.OpenAIError as e:
        raise EvalError(f"cannot reach the endpoint {endpoint}: {e}") from e


def http(endpoint: str, api_key: str | None = None, timeout_s: float = 120.0, stream: bool = True) -> Backend:
    """Any OpenAI-compatible endpoint; our own server also answers /v1/retrieve and returns `sources`/`grounding`."""
    import httpx

    client = openai_client(endpoint, api_key, timeout_s)
    models = set(list_models(client, endpoint))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def retrieve(query: str, top_k: int, retrieval: dict | None) -> list[dict]:
        r = httpx.post(f"{base_url(endpoint)}/retrieve", json={"query": query, "top_k": top_k, "retrieval": retrieval or {}},
                       headers=headers, timeout=timeout_s)
        r.raise_for_status()
        return r.json()["chunks"]

    try:
        probe = httpx.post(f"{base_url(endpoint)}/retrieve", json={"query": "probe", "top_k": 1}, headers=headers,
                           timeout=timeout_s)
        has_retrieve = probe.status_code == 200 and "chunks" in probe.json()
    except (httpx.HTTPError, ValueError):
        has_retrieve = False

    def complete(model: str, messages: list[dict], max_tokens: int, temperature: float, retrieval: dict | None) -> dict:
        extra = {"retrieval": retrieval} if retrieval else None
        if not stream:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_tokens=max_tokens, temperature=temperature, extra_body=extra)
            return raw.http_response.json()
        t0 = time.perf_counter()
        chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=temperature,
                                                extra_body=extra, stream=True)
        return collect_stream((c.model_dump() for c in chunks), t0)

    return Backend(endpoint, complete, retrieve if has_retrieve else None, models)
