"""The OpenAI-compatible HTTP API (FastAPI): chat completions with sources, embeddings, retrieve, documents, health."""

from __future__ import annotations

import hmac
import json
import shutil
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import BadRequest, EngineUnavailable, NotReady, ServeError
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


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send n, user, seed...: accepted and ignored
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    retrieval: RetrievalOverride | None = None


class RetrieveRequest(BaseModel):
    query: str = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=50)
    retrieval: RetrievalOverride | None = None


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str]
    model: str | None = None


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

    def start(self, embedder=None) -> None:
        """Ingest when the index is missing or stale, then load the engine (and the adapter, if configured)."""
        try:
            from ingest import ingest

            with self.ingest_lock:
                summary = ingest(self.settings, embedder=embedder, progress=False)
            print(f"ftatlas: index ready: {summary.text().splitlines()[0]}", flush=True)
            rag = self.rag or RagEngine(self.settings, embedder=embedder)
            rag.engine()
            rag.load_adapter()
            if rag.adapter_error:
                print(f"ftatlas: {rag.adapter_error}", flush=True)
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
    if not keys:
        return
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
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
        return JSONResponse(error_body(str(exc), exc.type, exc.code), exc.status)

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
            return {"status": "ok", "chunks": state.rag.retriever.chunk_count(), "engine": settings.llm.engine}
        status = "error" if state.error else "loading"
        return JSONResponse({"status": status, "error": state.error}, 503)

    @app.get("/v1/models", dependencies=auth)
    def models(rag: Rag):
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "ftatlas"} for m in rag.models()]}

    @app.post("/v1/chat/completions", dependencies=auth)
    def chat(req: ChatRequest, rag: Rag):
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        kwargs = dict(max_tokens=req.max_tokens or req.max_completion_tokens, temperature=req.temperature,
                      retrieval=req.retrieval.model_dump(exclude_none=True) if req.retrieval else None,
                      top_p=req.top_p, stop=req.stop)
        if not req.stream:
            return rag.complete(req.model, messages, **kwargs)
        chunks = rag.stream_chunks(req.model, messages, **kwargs)
        first = next(chunks)  # prepares (validates, retrieves) before the 200 goes out: errors stay HTTP errors
        return StreamingResponse(_sse(first, chunks), media_type="text/event-stream")

    @app.post("/v1/embeddings", dependencies=auth)
    def embeddings(req: EmbeddingsRequest, rag: Rag):
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            raise BadRequest("input must be a non-empty string or list of non-empty strings")
        vecs = rag.embedder.encode(texts)
        return {"object": "list", "model": rag.embedder.id,
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)],
                "usage": {"prompt_tokens": sum(rag.embedder.count_tokens(t) for t in texts), "total_tokens": 0}}

    @app.post("/v1/retrieve", dependencies=auth)
    def retrieve(req: RetrieveRequest, rag: Rag):
        over = req.retrieval.model_dump(exclude_none=True) if req.retrieval else {}
        if req.top_k:
            over["top_k"] = req.top_k
        passages = rag.retriever.retrieve(req.query, rag.retrieval_options(over))
        return {"chunks": sorted((p.as_source(i) for i, p in enumerate(passages, 1)), key=lambda s: -s["score"])}

    @app.get("/v1/documents", dependencies=auth)
    def documents(rag: Rag):
        from ingest import list_documents

        return {"data": [{"id": k, **d} for k, d in list_documents(settings).items()]}

    @app.post("/v1/documents", dependencies=auth)
    def upload(rag: Rag, file: UploadFile = File(...)):
        from ingest import ingest

        name = Path(file.filename or "upload.txt").name
        folder = settings.data_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        with open(target, "wb") as out:
            shutil.copyfileobj(file.file, out)
        with state.ingest_lock:
            summary = ingest(settings, [target], embedder=rag.embedder, progress=False)
        if summary.failed and not (summary.added or summary.updated or summary.skipped):
            target.unlink(missing_ok=True)
            raise BadRequest("; ".join(f"{Path(n).name}: {r}" for n, r in summary.failed))
        return {"added": summary.added, "updated": summary.updated, "skipped": summary.skipped, "chunks": summary.chunks}

    @app.delete("/v1/documents/{doc_id}", dependencies=auth)
    def delete(doc_id: str, rag: Rag):
        from ingest import IngestError, delete_document

        with state.ingest_lock:
            try:
                keys = delete_document(settings, doc_id)
            except IngestError as e:
                return JSONResponse(error_body(str(e), "invalid_request_error", "document_not_found"), 404)
        return {"deleted": keys}

    from .advice_api import router as advice_router

    app.include_router(advice_router(get_rag), dependencies=auth)  # the advisor and the memory calculator

    if ui:
        from .ui import mount_ui

        app = mount_ui(app, state)
    if start:
        threading.Thread(target=state.start, kwargs={"embedder": embedder}, daemon=True, name="ftatlas-start").start()
    return app


def _sse(first: dict, chunks) -> Any:
    yield f"data: {json.dumps(first, ensure_ascii=False)}\n\n"
    try:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except ServeError as e:  # the engine died mid-answer: say so in the stream, in OpenAI's error shape
        yield f"data: {json.dumps(error_body(str(e), e.type, e.code))}\n\n"
    yield "data: [DONE]\n\n"
