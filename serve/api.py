"""The OpenAI-compatible HTTP API (FastAPI): chat completions with sources, embeddings, retrieve, documents, health."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .answer_log import MAX_COMMENT_CHARS, MAX_CORRECTION_CHARS, AnswerLog, Feedback, LogOff, log_path, rater_of_key
from .auth import KeyGate, add_login, bearer, key_matches
from .doors import BodyLimit, OriginCheck
from .errors import BadRequest, Busy, EngineUnavailable, NotReady, ServeError, TooLarge, Unsupported, UnknownModel
from .models import offered
from .rag import RagEngine


class RetrievalOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["hybrid", "dense", "bm25"] | None = None
    rerank: bool | None = None
    doc_ids: list[str] | None = None
    language: str | None = None
    top_k: int | None = Field(None, ge=1, le=50)


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


# Fields a client may send that change nothing we do, so they are accepted (with these values, where given) and ignored.
IGNORED_FIELDS = {"user", "seed", "presence_penalty", "frequency_penalty", "stream_options", "metadata", "store",
                  "service_tier", "parallel_tool_calls"}
HARMLESS_VALUES = {"n": (1, None), "logprobs": (False, None), "top_logprobs": (0, None), "tool_choice": ("none", None),
                   "response_format": ({"type": "text"}, None), "logit_bias": ({}, None), "tools": ([], None),
                   "modalities": (["text"], None)}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked by unsupported(): ignorable fields pass, the rest get a 400
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    retrieval: RetrievalOverride | None = None

    def check_supported(self) -> None:
        """BadRequest naming the first field we would silently get wrong (n > 1, tools, logprobs, ...)."""
        for name, value in (self.model_extra or {}).items():
            if name in IGNORED_FIELDS:
                continue
            if name in HARMLESS_VALUES:
                if value in HARMLESS_VALUES[name]:
                    continue
                raise Unsupported(f"unsupported value for '{name}': {json.dumps(value)[:80]} (this server accepts "
                                  f"only {json.dumps(HARMLESS_VALUES[name][0])})", name)
            raise Unsupported(f"unsupported field '{name}': this server does not implement it", name)


class RetrieveRequest(BaseModel):
    query: str = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=50)
    retrieval: RetrievalOverride | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=100, description="The chat completion id the answer came with.")
    rating: Literal[1, -1] | None = None
    correction: str | None = Field(None, max_length=MAX_CORRECTION_CHARS, description="A better answer.")
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)

    def feedback(self, rater: str) -> Feedback:
        correction = (self.correction or "").strip() or None
        if self.rating is None and correction is None:
            raise BadRequest("feedback needs a rating (1 or -1) or a correction")
        return Feedback(self.id, rater, self.rating, correction, (self.comment or "").strip() or None)


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str]
    model: str


class _Unauthorized(Exception):
    pass


def error_body(message: str, type_: str, code: str) -> dict:
    return {"error": {"message": message, "type": type_, "code": code}}


class AppState:
    """What the routes share: the settings, the RAG engine once ready, and the start-up error if any."""

    def __init__(self, settings, rag: RagEngine | None):
        self.settings = settings
        self.rag = rag
        self.error: str | None = None
        self.ingest_lock = threading.Lock()
        self.log, self.log_error = None, None
        try:
            self.log = AnswerLog.of(settings)
        except Exception as e:  # a damaged log file is kept as it is; answers go on, feedback says why it cannot
            self.log_error = f"the answer log {log_path(settings)} cannot be opened ({type(e).__name__}: {e})"
            print(f"ftatlas: {self.log_error}", flush=True)
        if rag is not None:
            rag.answer_log = self.log

    def answer_log(self) -> AnswerLog:
        """The answer log, or the error feedback gets: 409 when serve.log_answers is off, 503 when it is damaged."""
        if self.log is not None:
            return self.log
        if self.log_error:
            raise EngineUnavailable(self.log_error)
        raise LogOff("the answer log is off (serve.log_answers: false), so there is no answer to rate")

    def start(self, embedder=None) -> None:
        """Ingest when the index is missing or stale, then load the engine (and the adapter, if configured)."""
        try:
            from ingest import ingest

            with self.ingest_lock:
                summary = ingest(self.settings, embedder=embedder, progress=False)
            print(f"ftatlas: index ready: {summary.text().splitlines()[0]}", flush=True)
            rag = self.rag or RagEngine(self.settings, embedder=embedder)
            rag.answer_log = self.log
            rag.engine()
            rag.load_adapter()
            for why in rag.adapter_errors.values():
                print(f"ftatlas: {why}", flush=True)
            self.rag = rag
        except Exception as e:  # start-up failures are reported by /health and every route, not by a crash
            self.error = f"{type(e).__name__}: {e}"
            print(f"ftatlas: start-up failed: {self.error}", flush=True)


def get_rag(request: Request) -> RagEngine:
    state: AppState = request.app.state.ftatlas
    if state.rag is None:
        raise EngineUnavailable(f"start-up failed: {state.error}") if state.error else NotReady("the index and the engine are still loading")
    return state.rag


def check_key(request: Request) -> None:
    """Constant-time check of `Authorization: Bearer <key>` when serve.api_keys is set."""
    keys = request.app.state.ftatlas.settings.serve.api_keys
    if keys and key_matches(bearer(request.headers), keys) is None:
        raise _Unauthorized()


Rag = Annotated[RagEngine, Depends(get_rag)]


def create_app(settings, rag: RagEngine | None = None, start: bool = True, embedder=None, ui: bool = True) -> FastAPI:
    """The app: /v1 API, /health, and the Gradio UI at / (when ui=True). Starts loading in a thread when start=True."""
    state = AppState(settings, rag)
    app = FastAPI(title="ftatlas", version="0.1.0")
    app.state.ftatlas = state

    auth = [Depends(check_key)]

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', [])[1:]) or 'body'}: {e.get('msg')}" for e in errs[:5])
        return JSONResponse(error_body(f"invalid request: {msg}", "invalid_request_error", "invalid_request"), 400)

    @app.exception_handler(ServeError)
    async def on_serve_error(request: Request, exc: ServeError):
        retry = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(retry)} if retry is not None else None
        return JSONResponse(error_body(str(exc), exc.type, exc.code), exc.status, headers=headers)

    @app.exception_handler(_Unauthorized)
    async def on_unauthorized(request: Request, exc):
        return JSONResponse(error_body("missing or invalid API key (Authorization: Bearer <key>)", "invalid_request_error",
                                       "invalid_api_key"), 401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", str(exc.status_code)), exc.status_code)

    @app.get("/health")
    def health():
        if state.rag is not None:
            ready = state.rag.ready()  # per engine, never by generating (see Engine.ready)
            body = {"status": "ok" if ready else "unavailable", "chunks": state.rag.retriever.chunk_count(),
                    "engine": settings.llm.engine, "queue": state.rag.queue.stats()}
            return body if ready else JSONResponse({**body, "error": ready.reason}, 503)
        status = "error" if state.error else "loading"
        return JSONResponse({"status": status, "error": state.error}, 503)

    @app.get("/v1/models", dependencies=auth)
    def models(rag: Rag):
        # The best measured model first: clients that take the first listed model get it.
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "ftatlas"}
                                           for m in offered(settings, rag.models())]}

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(req: ChatRequest, request: Request, rag: Rag):
        req.check_supported()
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        cancel = threading.Event()  # set when the client disconnects: leaves the queue, stops the generation
        kwargs = dict(max_tokens=req.max_tokens or req.max_completion_tokens, temperature=req.temperature,
                      retrieval=req.retrieval.model_dump(exclude_none=True) if req.retrieval else None,
                      top_p=req.top_p, stop=req.stop, cancel=cancel)
        if not req.stream:
            return await _unless_disconnected(request, cancel, run_in_threadpool(rag.complete, req.model, messages, **kwargs))
        chunks = rag.stream_chunks(req.model, messages, **kwargs)
        # prepares (validates, retrieves, takes a place in the queue) before the 200 goes out: errors stay HTTP errors
        first = await _unless_disconnected(request, cancel, run_in_threadpool(next, chunks))
        return StreamingResponse(_events(request, cancel, _sse(first, chunks)), media_type="text/event-stream")

    @app.post("/v1/feedback", dependencies=auth)
    def feedback(req: FeedbackRequest, request: Request):
        keys = settings.serve.api_keys
        key = key_matches(bearer(request.headers), keys) if keys else None
        stored = state.answer_log().rate(req.feedback(rater_of_key(key) if key else "anonymous"))
        return {"object": "feedback", **stored}

    @app.post("/v1/embeddings", dependencies=auth)
    def embeddings(req: EmbeddingsRequest, rag: Rag):
        if req.model != rag.embedder.id:
            raise UnknownModel(f"embedding model {req.model!r} is not served; available: {rag.embedder.id}")
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            raise BadRequest("input must be a non-empty string or list of non-empty strings")
        vecs = rag.embedder.encode(texts)
        tokens = sum(rag.embedder.input_tokens(t) for t in texts)
        return {"object": "list", "model": rag.embedder.id,
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/retrieve", dependencies=auth)
    def retrieve(req: RetrieveRequest, rag: Rag):
        over = req.retrieval.model_dump(exclude_none=True) if req.retrieval else {}
        if req.top_k:
            over["top_k"] = req.top_k
        timings: dict = {}
        t0 = time.perf_counter()
        passages = rag.retriever.retrieve(req.query, rag.retrieval_options(over), timings)
        timings["total_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return {"chunks": sorted((p.as_source(i) for i, p in enumerate(passages, 1)), key=lambda s: -s["score"]),
                "timings": timings}

    @app.get("/v1/documents", dependencies=auth)
    def documents(rag: Rag):
        from ingest import list_documents

        return {"data": [{"id": k, **d} for k, d in list_documents(settings).items()]}

    @app.post("/v1/documents", dependencies=auth)
    def upload(rag: Rag, file: UploadFile = File(...)):
        from ingest import IndexBusy, UploadError, UploadTooLarge, add_upload

        try:
            summary = add_upload(settings, file.filename or "", file.file, settings.serve.max_upload_mb, embedder=rag.embedder)
        except IndexBusy as e:
            raise Busy(str(e), BUSY_RETRY_S) from e
        except UploadTooLarge as e:
            raise TooLarge(str(e)) from e
        except UploadError as e:
            raise BadRequest(str(e)) from e
        return {"added": summary.added, "updated": summary.updated, "skipped": summary.skipped, "chunks": summary.chunks}

    @app.delete("/v1/documents/{doc_id}", dependencies=auth)
    def delete(doc_id: str, rag: Rag):
        from ingest import IndexBusy, IngestError, delete_document

        try:
            keys = delete_document(settings, doc_id)
        except IndexBusy as e:
            raise Busy(str(e), BUSY_RETRY_S) from e
        except IngestError as e:
            return JSONResponse(error_body(str(e), "invalid_request_error", "document_not_found"), 404)
        return {"deleted": keys}

    add_login(app, settings)
    from .advice_api import router as advice_router

    app.include_router(advice_router(get_rag), dependencies=auth)  # the advisor and the memory calculator

    if ui:
        from .ui import mount_ui

        app = mount_ui(app, state)
    # outermost last: a foreign Origin is refused first, then a missing key, then an oversized body
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(KeyGate, settings=settings)
    app.add_middleware(OriginCheck, settings=settings)
    if start:
        threading.Thread(target=state.start, kwargs={"embedder": embedder}, daemon=True, name="ftatlas-start").start()
    return app


DISCONNECT_POLL_S = 0.5
BUSY_RETRY_S = 5  # Retry-After when the index stayed locked past ingest.lock_timeout_s


async def _unless_disconnected(request: Request, cancel: threading.Event, work) -> Any:
    """Await `work` (running in a thread), setting `cancel` if the client goes away meanwhile."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if not cancel.is_set() and await request.is_disconnected():
            cancel.set()


async def _events(request: Request, cancel: threading.Event, events) -> Any:
    """The SSE stream, read from its thread event by event. A disconnect sets `cancel`, even while the request waits
    in the queue and sends nothing; then the stream is closed, which gives back its place in the queue at once."""
    pending = None
    try:
        while True:
            pending = asyncio.ensure_future(run_in_threadpool(next, events, None))
            event = await _unless_disconnected(request, cancel, pending)
            pending = None
            if event is None or cancel.is_set():
                break
            yield event
    finally:
        cancel.set()
        with anyio.CancelScope(shield=True):  # runs even when the response was cancelled by the disconnect
            if pending is not None:
                await asyncio.wait({pending})  # the thread sees `cancel` at its next token or queue poll
            await run_in_threadpool(events.close)


def _sse(first: dict, chunks) -> Any:
    yield f"data: {json.dumps(first, ensure_ascii=False)}\n\n"
    try:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except ServeError as e:  # the engine died mid-answer: say so in the stream, in OpenAI's error shape
        yield f"data: {json.dumps(error_body(str(e), e.type, e.code))}\n\n"
    finally:
        chunks.close()  # a stream closed early frees its queue place and engine lock now, not at garbage collection
    yield "data: [DONE]\n\n"
