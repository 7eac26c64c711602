"""Question -> retrieval -> trimmed passages -> prompt -> engine -> grounded answer with numbered sources."""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

from .engines import Engine, GenerationParams, create_engine
from .errors import BadRequest, ContextOverflow, EngineUnavailable, UnknownModel
from .grounding import Grounder, reading, split_generated
from .memory_chat import calculator_passages
from .models import MODELS, ModelSpec
from .prompt import NO_ANSWER, build_messages
from .retrieval import Passage, RetrievalOptions, Retriever, is_russian

STOP = ["\n\n\n", "Question:", "Passages:", "<|im_end|>"]
EXTRACTIVE_LEAD = {"en": "", "ru": "Из источников: "}


@dataclass
class Prepared:
    spec: ModelSpec
    question: str
    language: str
    passages: list[Passage]
    messages: list[dict]
    grounder: Grounder | None
    refuse: bool = False
    timings: dict = field(default_factory=dict)


def question_language(text: str) -> str:
    """Example: 'Что такое LoRA?' -> 'ru'; 'What is LoRA?' -> 'en'."""
    return "ru" if is_russian(text) else "en"


class RagEngine:
    """The one answering path shared by the API, the UI and the CLI."""

    def __init__(self, settings, engine: Engine | None = None, retriever: Retriever | None = None, embedder=None):
        self.settings = settings
        self.retriever = retriever or Retriever(settings, embedder)
        self.embedder = self.retriever.embedder
        self._engines: dict[bool, Engine] = {}
        self._engine_lock = threading.Lock()
        if engine is not None:
            self._engines[False] = engine
        self.adapter_error: str | None = None

    # -- models --------------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        return [m for m, spec in MODELS.items() if not spec.adapter or (self.settings.llm.adapter and not self.adapter_error)]

    def spec(self, model: str) -> ModelSpec:
        if model not in MODELS or model not in self.models():
            why = f" ({self.adapter_error})" if model in MODELS and self.adapter_error else ""
            raise UnknownModel(f"model {model!r} is not served{why}; available: {', '.join(self.models())}")
        return MODELS[model]

    def engine(self, adapter: bool = False) -> Engine:
        with self._engine_lock:
            if adapter not in self._engines:
                self._engines[adapter] = create_engine(self.settings, adapter=adapter)
            return self._engines[adapter]

    def load_adapter(self) -> None:
        """Load the adapter engine at start-up; a bad adapter is refused with its reason and the other modes go on."""
        if not self.settings.llm.adapter:
            return
        try:
            self.engine(adapter=True)
        except Exception as e:  # AdapterError, EngineUnavailable, loader errors: all mean "not served"
            self.adapter_error = f"adapter {self.settings.llm.adapter} refused: {e}"

    # -- preparing -----------------------------------------------------------------------------------------
    def retrieval_query(self, messages: list[dict]) -> str:
        """The last question, with the previous user turn when it is a follow-up (short, or a conversation)."""
        users = [m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
        if not users:
            raise BadRequest("messages must contain a user message with text content")
        return users[-1] if len(users) == 1 else f"{users[-2]} {users[-1]}"

    def prepare(self, model: str, messages: list[dict], retrieval: dict | None = None, max_tokens: int | None = None) -> Prepared:
        spec = self.spec(model)
        if not messages or messages[-1].get("role") != "user" or not str(messages[-1].get("content", "")).strip():
            raise BadRequest("the last message must be a non-empty user message")
        question = str(messages[-1]["content"]).strip()
        language = question_language(question)
        history = [m for m in messages[:-1] if m.get("role") in ("user", "assistant")]
        max_tokens = max_tokens or self.settings.llm.max_tokens
        timings = {}
        if not spec.retrieval:
            msgs = build_messages(question, None, language, history, self._count, self.settings.serve.history_tokens)
            self._check_budget(msgs, max_tokens)
            return Prepared(spec, question, language, [], msgs, None, timings=timings)
        t0 = time.perf_counter()
        query = self.retrieval_query(messages)
        opts = self.retrieval_options(retrieval)
        passages = self.retriever.retrieve(query, opts)
        passages = calculator_passages(question) + passages  # a memory question cites the calculator's result
        timings["retrieval_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        passages, grounder = reading(self.embedder, question, passages, self.retriever.search_query(query))
        refuse = not passages or grounder.best_relevance() < self.settings.llm.refuse_below
        msgs = build_messages(question, passages, language, history, self._count, self.settings.serve.history_tokens)
        while self._too_long(msgs, max_tokens) and len(passages) > 1:
            passages = passages[:-1]
            grounder = grounder.subset(passages)
            msgs = build_messages(question, passages, language, history, self._count, self.settings.serve.history_tokens)
        self._check_budget(msgs, max_tokens)
        return Prepared(spec, question, language, passages, msgs, grounder, refuse, timings)

    def retrieval_options(self, retrieval: dict | None) -> RetrievalOptions:
        r, rs = retrieval or {}, self.settings.retrieval
        return RetrievalOptions(
            mode=r.get("mode") or rs.mode, top_k=int(r.get("top_k") or rs.top_k),
            rerank=bool(r.get("rerank", rs.rerank)), doc_ids=r.get("doc_ids") or None, language=r.get("language") or None,
        )

    def _count(self, text: str) -> int:
        engine = self._engines.get(False)
        return engine.count_tokens(text) if engine else len(text) // 3 + 1

    def _prompt_tokens(self, msgs: list[dict]) -> int:
        return sum(self._count(m["content"]) + 6 for m in msgs)

    def _too_long(self, msgs: list[dict], max_tokens: int) -> bool:
        return self._prompt_tokens(msgs) + max_tokens > self._n_ctx()

    def _n_ctx(self) -> int:
        engine = self._engines.get(False)
        return engine.n_ctx if engine else self.settings.llm.n_ctx

    def _check_budget(self, msgs: list[dict], max_tokens: int) -> None:
        used = self._prompt_tokens(msgs)
        if used + max_tokens > self._n_ctx():
            raise ContextOverflow(
                f"input is {used} tokens and max_tokens is {max_tokens}, over the context limit of {self._n_ctx()} tokens"
            )

    # -- answering -----------------------------------------------------------------------------------------
    def stream_text(self, prep: Prepared, params: GenerationParams) -> Iterator[str]:
        """Answer text in pieces; `prep.timings['grounding']` is filled when the generator is exhausted."""
        lang = prep.language
        if not prep.spec.retrieval:
            yield from self.engine(prep.spec.adapter).stream(prep.messages, params)
            prep.timings["grounding"] = None
            return
        if prep.refuse:
            prep.timings["grounding"] = {"mode": "refused", "supported": 0.0}
            yield NO_ANSWER.get(lang, NO_ANSWER["en"])
            return
        if lang not in self.settings.llm.generate_languages:
            # Measured: the 135M model loops in Russian; quote the passages instead of generating.
            prep.timings["grounding"] = {"mode": "extractive", "supported": 1.0}
            yield EXTRACTIVE_LEAD.get(lang, "") + prep.grounder.extractive(self.settings.llm.extractive_sentences)
            return
        yield from self._generate_grounded(prep, params)

    def _generate_grounded(self, prep: Prepared, params: GenerationParams) -> Iterator[str]:
        """Stream sentence by sentence; only sentences a cited passage supports are let through."""
        llm = self.settings.llm
        buf, kept, total, emitted = "", [], 0, False
        no_answer = NO_ANSWER["en"].lower()[:30]
        said_no = False

        def judge(sentence: str) -> str | None:
            nonlocal total, said_no
            if no_answer in sentence.lower() or "do not contain" in sentence.lower():
                said_no = True
                return None
            total += 1
            ok, n, score = prep.grounder.support(sentence, llm.grounding_overlap, llm.grounding_similarity,
                                                 llm.grounding_top_sentences)
            if not ok:
                return None
            kept.append(score)
            return sentence if re.search(r"\[\d+\]", sentence) else f"{sentence.rstrip()} [{n}]"

        for delta in self.engine(prep.spec.adapter).stream(prep.messages, params):
            buf += delta
            parts = split_generated(buf)
            if len(parts) > 1 and not re.fullmatch(r"(\[\d+\]\s*)+", parts[-1]):
                for sentence in parts[:-1]:
                    out = judge(sentence)
                    if out:
                        yield (" " if emitted else "") + out
                        emitted = True
                buf = parts[-1]
        for sentence in split_generated(buf):
            out = judge(sentence)
            if out:
                yield (" " if emitted else "") + out
                emitted = True
        share = len(kept) / total if total else 0.0
        # A small model declines answerable questions too; its "no" stands only when retrieval is not confident.
        if not emitted and said_no and prep.grounder.best_relevance() < llm.model_refusal_below:
            prep.timings["grounding"] = {"mode": "refused", "supported": 0.0}
            yield NO_ANSWER.get(prep.language, NO_ANSWER["en"])
        elif not emitted or share < llm.grounding_min_supported:
            prep.timings["grounding"] = {"mode": "extractive", "supported": round(share, 3)}
            yield (" " if emitted else "") + prep.grounder.extractive(llm.extractive_sentences)
        else:
            prep.timings["grounding"] = {"mode": "generated", "supported": round(share, 3)}

    def params(self, max_tokens=None, temperature=None, top_p=None, stop=None) -> GenerationParams:
        llm = self.settings.llm
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return GenerationParams(
            max_tokens=max_tokens or llm.max_tokens, temperature=llm.temperature if temperature is None else temperature,
            top_p=llm.top_p if top_p is None else top_p, stop=STOP + stops, repeat_penalty=llm.repeat_penalty,
        )

    def complete(self, model: str, messages: list[dict], max_tokens: int | None = None, temperature: float | None = None,
                 retrieval: dict | None = None, top_p: float | None = None, stop=None) -> dict:
        """A non-streaming chat.completion dict with top-level `sources` and `grounding`."""
        t0 = time.perf_counter()
        prep = self.prepare(model, messages, retrieval, max_tokens)
        params = self.params(max_tokens, temperature, top_p, stop)
        text = "".join(self.stream_text(prep, params)).strip()
        prompt_tokens = self._prompt_tokens(prep.messages)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": self._count(text),
                      "total_tokens": prompt_tokens + self._count(text)},
            "sources": self.sources(prep), "grounding": prep.timings.get("grounding"),
            "timings": {**{k: v for k, v in prep.timings.items() if k != "grounding"},
                        "total_ms": round((time.perf_counter() - t0) * 1000, 1)},
        }

    def stream_chunks(self, model: str, messages: list[dict], max_tokens=None, temperature=None, retrieval=None,
                      top_p=None, stop=None) -> Iterator[dict]:
        """chat.completion.chunk dicts: the first carries the role and `sources`, the last `grounding`."""
        prep = self.prepare(model, messages, retrieval, max_tokens)
        params = self.params(max_tokens, temperature, top_p, stop)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(delta: dict, finish=None, **extra) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

        yield chunk({"role": "assistant"}, sources=self.sources(prep))
        for piece in self.stream_text(prep, params):
            yield chunk({"content": piece})
        yield chunk({}, "stop", grounding=prep.timings.get("grounding"))

    @staticmethod
    def sources(prep: Prepared) -> list[dict]:
        items = [p.as_source(i) for i, p in enumerate(prep.passages, 1)]
        return sorted(items, key=lambda s: -s["score"])

    def ready(self) -> bool:
        try:
            return self.retriever.chunk_count() > 0 and self.engine().ready()
        except EngineUnavailable:
            return False

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
