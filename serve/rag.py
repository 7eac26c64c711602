"""Question -> retrieval -> trimmed passages -> prompt -> engine -> grounded answer with numbered sources."""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from .answer import extractive_quotes, grounded_answer
from .answer_log import AnswerLog, adapter_sha256
from .engines import Engine, GenerationParams, Readiness, create_engine, languages_written
from .errors import BadRequest, ClientGone, ContextOverflow, EngineUnavailable, UnknownModel
from .grounding import Grounder, reading
from .memory_chat import calculator_passages
from .models import LORA, ModelSpec, adapter_specs, configured
from .prompt import EXTRACTIVE_LEAD, NO_ANSWER, build_messages, trim_to_tokens, without_decline
from .queue import EngineQueue
from .retrieval import Passage, RetrievalOptions, Retriever, is_russian

STOP = ["\n\n\n", "Question:", "Passages:", "<|im_end|>"]
NO_EVIDENCE = {"evidence": [], "evidence_dropped": 0, "stopped_early": False, "quote_backed": 0, "asked_again": False}  # answers the model did not write


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
    finish: str = "stop"  # the engine's finish reason: "length" when max_tokens cut it

    @property
    def finish_reason(self) -> str:
        """OpenAI's finish_reason: "length" when max_tokens cut the text the client receives."""
        mode = (self.timings.get("grounding") or {}).get("mode", "generated")
        return "length" if self.finish == "length" and mode == "generated" else "stop"


def _tracked(stream, prep: Prepared):
    """Passes an engine's deltas through and keeps its finish reason (the generator's return value) on `prep`."""
    prep.finish = (yield from stream) or "stop"


def new_id() -> str:
    """An OpenAI-style completion id, also the answer log's key. Example: 'chatcmpl-3f9a…' (24 hex digits)."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def question_language(text: str) -> str:
    """Example: 'Что такое LoRA?' -> 'ru'; 'What is LoRA?' -> 'en'."""
    return "ru" if is_russian(text) else "en"


def retrieval_query(messages: list[dict]) -> str:
    """What retrieval searches for: the last question, with the previous user turn when it is a follow-up.

    The fine-tuning data retrieves its passages the same way. Example: [user 'What is QLoRA?', assistant '4-bit
    base.', user 'And memory?'] -> 'What is QLoRA? And memory?'.
    """
    users = [m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    if not users:
        raise BadRequest("messages must contain a user message with text content")
    return users[-1] if len(users) == 1 else f"{users[-2]} {users[-1]}"


class RagEngine:
    """The one answering path shared by the API, the UI and the CLI."""

    def __init__(self, settings, engine: Engine | None = None, retriever: Retriever | None = None, embedder=None):
        self.settings = settings
        self.retriever = retriever or Retriever(settings, embedder)
        self.embedder = self.retriever.embedder
        self._engines: dict[bool | str, Engine] = {}  # by ModelSpec.slot
        self._engine_lock = threading.Lock()
        if engine is not None:
            self._engines[False] = engine
        self.adapter_errors: dict[str, str] = {}  # model name -> why its adapter is not served
        self.queue = EngineQueue(settings.serve.max_queue, settings.serve.max_active)
        self.answer_log: AnswerLog | None = None  # set by the server (serve.log_answers): every answer is recorded

    # -- models --------------------------------------------------------------------------------------------
    @property
    def adapter_error(self) -> str | None:
        """Why atlas-rag-lora (llm.adapter) is not served, if it is not."""
        return self.adapter_errors.get(LORA)

    def models(self) -> list[str]:
        return [m for m in configured(self.settings) if m not in self.adapter_errors]

    def spec(self, model: str) -> ModelSpec:
        known = configured(self.settings)
        if model not in known or model in self.adapter_errors:
            why = f" ({self.adapter_errors[model]})" if model in self.adapter_errors else ""
            raise UnknownModel(f"model {model!r} is not served{why}; available: {', '.join(self.models())}")
        return known[model]

    def engine(self, adapter: bool | str = False) -> Engine:
        """The engine of a ModelSpec.slot: the base model (False), its adapter (True), or another base's adapter (base)."""
        with self._engine_lock:
            if adapter not in self._engines:
                self._engines[adapter] = create_engine(self._engine_settings(adapter), adapter=bool(adapter))
            return self._engines[adapter]

    def _engine_settings(self, slot: bool | str):
        """The settings an engine is built from: an adapter's folder as llm.adapter, its base as llm.model."""
        if slot is False:
            return self.settings
        llm = self.settings.llm
        spec = next((s for s in adapter_specs(llm).values() if s.slot == slot), None)
        if spec is None:
            raise EngineUnavailable(f"no adapter is configured for {'llm.model' if slot is True else slot}")
        if isinstance(slot, str) and llm.engine not in ("llamacpp", "transformers"):
            raise EngineUnavailable(f"atlas-rag-lora-<base> models are served by the in-process engines (llamacpp, "
                                    f"transformers), not by {llm.engine}")
        update = {"adapter": spec.folder} | ({"model": spec.base} if isinstance(slot, str) else {})
        return self.settings.model_copy(update={"llm": llm.model_copy(update=update)})

    def load_adapter(self) -> None:
        """Load every configured adapter at start-up; a bad one is refused with its reason and the other models go on."""
        try:
            specs = adapter_specs(self.settings.llm)
        except EngineUnavailable as e:  # the adapter settings contradict themselves: no adapter is served
            self.adapter_errors[LORA] = str(e)
            return
        for name, spec in specs.items():
            try:
                self.engine(spec.slot)
            except Exception as e:  # AdapterError, EngineUnavailable, loader errors: all mean "not served"
                self.adapter_errors[name] = f"adapter {spec.folder} refused: {e}"

    def writes(self, spec: ModelSpec) -> list[str]:
        """Languages the model behind `spec` writes itself: llm.generate_languages when set, else what its base can."""
        chosen = self.settings.llm.generate_languages
        return list(chosen) if chosen is not None else languages_written(spec.base or self.settings.llm.model)

    # -- preparing -----------------------------------------------------------------------------------------
    def retrieval_query(self, messages: list[dict]) -> str:
        return retrieval_query(messages)

    def prepare(self, model: str, messages: list[dict], retrieval: dict | None = None, max_tokens: int | None = None) -> Prepared:
        spec = self.spec(model)
        if not messages or messages[-1].get("role") != "user" or not str(messages[-1].get("content", "")).strip():
            raise BadRequest("the last message must be a non-empty user message")
        question = str(messages[-1]["content"]).strip()
        language = question_language(question)
        history = [m for m in messages[:-1] if m.get("role") in ("user", "assistant")]
        max_tokens = max_tokens or self.settings.llm.max_tokens
        client = "\n".join(str(m.get("content") or "") for m in messages if m.get("role") in ("system", "developer"))
        client = trim_to_tokens(client, self._count, self.settings.serve.system_tokens)
        timings = {}
        if not spec.retrieval:
            msgs = build_messages(question, None, language, history, self._count, self.settings.serve.history_tokens,
                                  client)
            self._check_budget(msgs, max_tokens)
            return Prepared(spec, question, language, [], msgs, None, timings=timings)
        t0 = time.perf_counter()
        query = self.retrieval_query(messages)
        opts = self.retrieval_options(retrieval)
        passages = self.retriever.retrieve(query, opts)
        # A memory question also cites the calculator's estimate, after what retrieval found (published figures first).
        passages = passages + calculator_passages(question)
        timings["retrieval_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        t0 = time.perf_counter()
        passages, grounder = reading(self.embedder, question, passages, self.retriever.search_query(query),
                                     translate=self.retriever.glossary.expand)
        timings["reading_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        refuse = not passages or grounder.best_relevance() < self.settings.llm.refuse_below
        msgs = build_messages(question, passages, language, history, self._count, self.settings.serve.history_tokens,
                              client)
        while self._too_long(msgs, max_tokens) and len(passages) > 1:
            passages = passages[:-1]
            grounder = grounder.subset(passages)
            msgs = build_messages(question, passages, language, history, self._count, self.settings.serve.history_tokens,
                                  client)
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
            yield from _tracked(self.engine(prep.spec.slot).stream(prep.messages, params), prep)
            prep.timings["grounding"] = None
            return
        if prep.refuse:
            prep.timings["grounding"] = {"mode": "refused", "supported": 0.0, **NO_EVIDENCE}
            yield NO_ANSWER.get(lang, NO_ANSWER["en"])
            return
        if lang not in self.writes(prep.spec):
            # Measured: SmolLM2-135M loops in Russian; quote the passages instead of generating.
            prep.timings["grounding"] = {"mode": "extractive", "supported": 1.0, **NO_EVIDENCE}
            yield EXTRACTIVE_LEAD.get(lang, "") + extractive_quotes(prep.grounder, self.settings.llm)
            return
        yield from self._generate_grounded(prep, params)

    def _generate_grounded(self, prep: Prepared, params: GenerationParams) -> Iterator[str]:
        """The model's answer, sentence by sentence as each passes the check; quotes go to the evidence."""
        verdict: dict = {}
        engine = self.engine(prep.spec.slot)
        stream = _tracked(engine.stream(prep.messages, params), prep)
        again = lambda: _tracked(engine.stream(without_decline(prep.messages, prep.language), params), prep)  # noqa: E731
        yield from grounded_answer(stream, prep.grounder, prep.passages, self.settings.llm, prep.language, verdict, again)
        prep.timings["grounding"] = verdict

    def params(self, max_tokens=None, temperature=None, top_p=None, stop=None, cancel=None) -> GenerationParams:
        llm = self.settings.llm
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return GenerationParams(
            max_tokens=max_tokens or llm.max_tokens, temperature=llm.temperature if temperature is None else temperature,
            top_p=llm.top_p if top_p is None else top_p, stop=STOP + stops, repeat_penalty=llm.repeat_penalty,
            cancel=cancel if cancel is not None else threading.Event(),
        )

    def uses_engine(self, prep: Prepared) -> bool:
        """Whether answering calls the engine (and so waits in its queue); refusals and quotes do not."""
        return not prep.spec.retrieval or (not prep.refuse and prep.language in self.writes(prep.spec))

    @contextmanager
    def turn(self, prep: Prepared, params: GenerationParams) -> Iterator[None]:
        """Holds a place in the engine queue for one request (QueueFull when it is full; ClientGone when the caller
        left while waiting); answers that need no engine pass straight through."""
        if not self.uses_engine(prep):
            yield
            return
        ticket = self.queue.join()
        try:
            for _ in self.queue.wait(ticket, params.cancel):
                pass
            if params.cancel.is_set():
                raise ClientGone("the client went away while waiting for the model")
            yield
        finally:
            self.queue.done(ticket)

    def complete(self, model: str, messages: list[dict], max_tokens: int | None = None, temperature: float | None = None,
                 retrieval: dict | None = None, top_p: float | None = None, stop=None,
                 cancel: threading.Event | None = None) -> dict:
        """A non-streaming chat.completion dict with top-level `sources` and `grounding`; a set `cancel` stops it."""
        t0 = time.perf_counter()
        prep = self.prepare(model, messages, retrieval, max_tokens)
        params = self.params(max_tokens, temperature, top_p, stop, cancel)
        with self.turn(prep, params):
            text = "".join(self.stream_text(prep, params)).strip()
        prompt_tokens = self._prompt_tokens(prep.messages)
        cid = new_id()
        self.log(cid, messages, prep, text)
        return {
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": prep.finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": self._count(text),
                      "total_tokens": prompt_tokens + self._count(text)},
            "sources": self.sources(prep), "grounding": prep.timings.get("grounding"),
            "timings": {**{k: v for k, v in prep.timings.items() if k != "grounding"},
                        "total_ms": round((time.perf_counter() - t0) * 1000, 1)},
        }

    def stream_chunks(self, model: str, messages: list[dict], max_tokens=None, temperature=None, retrieval=None,
                      top_p=None, stop=None, cancel: threading.Event | None = None) -> Iterator[dict]:
        """chat.completion.chunk dicts: the first carries the role and `sources`, the last `grounding`.

        The first chunk comes only once the request holds a place in the engine queue (else QueueFull); while it
        waits, empty chunks carry `queue: {"position": n}`. A set `cancel` leaves the queue and stops generating.
        """
        prep = self.prepare(model, messages, retrieval, max_tokens)
        params = self.params(max_tokens, temperature, top_p, stop, cancel)
        cid, created = new_id(), int(time.time())

        def chunk(delta: dict, finish=None, **extra) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

        ticket = self.queue.join() if self.uses_engine(prep) else None
        try:
            yield chunk({"role": "assistant"}, sources=self.sources(prep))
            if ticket is not None:
                for position in self.queue.wait(ticket, params.cancel):
                    yield chunk({}, queue={"position": position})
                if params.cancel.is_set():
                    return
            text = []
            for piece in self.stream_text(prep, params):
                text.append(piece)
                yield chunk({"content": piece})
            self.log(cid, messages, prep, "".join(text).strip())  # before the last chunk: a client may rate it at once
            yield chunk({}, prep.finish_reason, grounding=prep.timings.get("grounding"))
        finally:
            if ticket is not None:
                self.queue.done(ticket)

    def log(self, cid: str, messages: list[dict], prep: Prepared, text: str) -> None:
        """Record the answer in the answer log (when on); a failing log is reported, and the answer still goes out."""
        if self.answer_log is None:
            return
        folder = prep.spec.folder if prep.spec.adapter else None
        try:
            self.answer_log.record({
                "id": cid, "model": prep.spec.name, "question": prep.question, "language": prep.language,
                "adapter": self.settings.relative(self.settings.path(folder)) if folder else None,
                "adapter_sha256": adapter_sha256(self.settings.path(folder)) if folder else None,
                "messages": messages, "prompt": prep.messages,
                "passages": [{"id": p.id, "doc_id": p.doc_id, "score": round(p.score, 6)} for p in prep.passages],
                "answer": text, "mode": (prep.timings.get("grounding") or {}).get("mode"),
            })
        except Exception as e:  # sqlite3.Error, a full disk: the user still gets the answer
            print(f"ftatlas: the answer log could not record {cid}: {type(e).__name__}: {e}", flush=True)

    @staticmethod
    def sources(prep: Prepared) -> list[dict]:
        items = [p.as_source(i) for i, p in enumerate(prep.passages, 1)]
        return sorted(items, key=lambda s: -s["score"])

    def ready(self) -> Readiness:
        """Ready to answer: the index has chunks and the base engine says it is ready (it never generates for this)."""
        try:
            if self.retriever.chunk_count() == 0:
                return Readiness(False, "the index is empty: run `ftatlas ingest`")
            return self.engine().ready()
        except EngineUnavailable as e:
            return Readiness(False, str(e))

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
