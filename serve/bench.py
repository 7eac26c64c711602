"""`ftatlas bench serve`: retrieval latency (by stage, at 1x and a near-duplicate Nx index), TTFT and tokens/s via the
API vs llama.cpp direct, memory, concurrency."""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx


def _percentile(values: list[float], q: float) -> float:
    """Example: ([1, 2, 3, 4], 0.5) -> 2.5."""
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]) if len(values) > 1 else values[0]


def _stream(client: httpx.Client, url: str, body: dict, timeout: float = 300) -> tuple[float, str]:
    """(seconds to the first content token, the streamed text) for one streaming chat completion."""
    t0, first, text = time.perf_counter(), None, ""
    with client.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=timeout) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                first = first or time.perf_counter() - t0
                text += delta
    return first or 0.0, text


def _questions(settings, n: int) -> list[str]:
    path = settings.path(settings.evals.questions)
    qs = [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return (qs * (n // max(1, len(qs)) + 1))[:n]


def _serve(app) -> tuple[object, str]:
    """uvicorn serving `app` on a free 127.0.0.1 port in a thread -> (server, url)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    return server, f"http://127.0.0.1:{port}"


def _wait(url: str, path: str = "/health", timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def retrieval_latency(url: str, questions: list[str], rag=None) -> dict:
    """/v1/retrieve over HTTP: p50/p95 of the round trip and of each server stage; with the server's RagEngine, also
    its passage reading for answers (trimming the passages to what the model reads), timed on its own.

    One kept-alive client, as a real caller holds: a bare `httpx.post` builds a client (and its TLS context) per
    call, about 30 ms here, which is the caller's cost, not the server's."""
    from .grounding import reading

    lat: list[float] = []
    stages: dict[str, list[float]] = {}
    with httpx.Client(timeout=300) as client:
        for q in questions + questions[:5]:  # the first five again: the first calls warm caches up
            lat.append(_retrieve_once(client, url, q, stages))
            if rag is not None:
                passages = rag.retriever.retrieve(q)
                t0 = time.perf_counter()
                reading(rag.embedder, q, passages, rag.retriever.search_query(q))
                stages.setdefault("reading_ms", []).append((time.perf_counter() - t0) * 1000)
    lat, stages = lat[5:], {k: v[5:] for k, v in stages.items()}
    out = {"p50_ms": round(_percentile(lat, 0.5), 1), "p95_ms": round(_percentile(lat, 0.95), 1)}
    for k, v in stages.items():
        out[f"{k[:-3]}_p50_ms"], out[f"{k[:-3]}_p95_ms"] = round(_percentile(v, 0.5), 2), round(_percentile(v, 0.95), 2)
    return out


def _retrieve_once(client: httpx.Client, url: str, q: str, stages: dict[str, list[float]]) -> float:
    """One /v1/retrieve round trip in ms; the server's stage timings are added to `stages`."""
    t0 = time.perf_counter()
    r = client.post(url + "/v1/retrieve", json={"query": q})
    r.raise_for_status()
    ms = (time.perf_counter() - t0) * 1000
    for k, v in (r.json().get("timings") or {}).items():
        stages.setdefault(k, []).append(v)
    return ms


def scaled_rows(settings, scale: int, questions: list[str]) -> dict:
    """/v1/retrieve at 1x and over a near-duplicate index `scale` times larger, each on its own server, one run."""
    import tempfile

    from ingest import ingest
    from ingest.bench import near_duplicate_index
    from ingest.embedder import Embedder

    from . import RagEngine, create_app

    embedder = Embedder(settings.ingest.embed_model, settings.ingest.device, settings.ingest.embed_batch_size)
    ingest(settings, embedder=embedder, progress=False)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="ftatlas-bench-") as tmp:
        big = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"data_dir": Path(tmp), "chroma_host": None})})
        t0 = time.perf_counter()
        chunks = near_duplicate_index(settings, big, scale)
        build_s = time.perf_counter() - t0
        for name, s in (("1x", settings), (f"{scale}x", big)):
            rag = RagEngine(s, embedder=embedder)  # no LLM: retrieval and reading only
            t0 = time.perf_counter()
            chunk_count = rag.retriever.chunk_count()  # loads the index before the clock starts
            load_s = time.perf_counter() - t0
            server, url = _serve(create_app(s, rag=rag, start=False, ui=False))
            _wait(url, "/v1/models")
            rows[f"retrieve_{name}"] = {"chunks": chunk_count, "index_load_s": round(load_s, 1),
                                        **retrieval_latency(url, questions, rag)}
            server.should_exit = True
        rows[f"retrieve_{scale}x"]["build_s"] = round(build_s, 1)
        rows[f"retrieve_{scale}x"]["chunks_written"] = chunks
    return rows


def run_bench(settings, url: str | None = None, seconds: float = 60, clients: int = 8, out: Path | None = None,
              scale: int = 1, retrieval_only: bool = False) -> str:
    import psutil

    rows: dict = {}
    if scale > 1 or retrieval_only:
        rows.update(scaled_rows(settings, max(scale, 1), _questions(settings, 50)))
    if retrieval_only:
        return _write(rows, out)
    server = None
    if url is None:  # in-process: the real app on a free port in this process
        from . import create_app

        app = create_app(settings, ui=True)
        server, url = _serve(app)
    _wait(url)
    rows["url"] = url
    if scale <= 1:
        rows["retrieve_1x"] = retrieval_latency(url, _questions(settings, 50))

    # Same prompt both ways: the closed-book mode sends the messages straight to the engine.
    question = "Explain in detail how low-rank adaptation of large language models works and why it saves memory."
    body = {"model": "atlas-base", "max_tokens": 128, "temperature": 0, "messages": [{"role": "user", "content": question}]}
    with httpx.Client() as c:
        ttft_api, text_api = _stream(c, url, body)
        t_api = time.perf_counter()
        _, text_api = _stream(c, url, body)
    api_s = time.perf_counter() - t_api
    rows["api_ttft_ms"] = round(ttft_api * 1000, 1)
    if server is not None:
        rag = app.state.ftatlas.rag
        engine = rag.engine()
        prep = rag.prepare("atlas-base", body["messages"], None, 128)
        params = rag.params(128, 0.0)
        t0, first, text = time.perf_counter(), None, ""
        for delta in engine.stream(prep.messages, params):
            first = first or time.perf_counter() - t0
            text += delta
        direct_s = time.perf_counter() - t0
        n_api, n_direct = engine.count_tokens(text_api), engine.count_tokens(text)
        rows["direct_ttft_ms"] = round((first or 0) * 1000, 1)
        rows["api_tokens_per_s"] = round(n_api / api_s, 1)
        rows["direct_tokens_per_s"] = round(n_direct / direct_s, 1)
        rows["api_vs_direct_ratio"] = round(rows["api_tokens_per_s"] / rows["direct_tokens_per_s"], 3)
        rows["rss_mb"] = round(psutil.Process(os.getpid()).memory_info().rss / 2**20, 1)

    errors, done, rejected = [], [0], [0]
    stop_at = time.monotonic() + seconds
    qs = _questions(settings, 64)

    def client(i: int) -> None:
        with httpx.Client() as c:
            k = i
            while time.monotonic() < stop_at:
                try:
                    _stream(c, url, {"model": "atlas-rag", "max_tokens": 32, "messages": [{"role": "user", "content": qs[k % len(qs)]}]})
                    done[0] += 1
                except httpx.HTTPStatusError as e:
                    if e.response.status_code == 429:  # the queue is full (serve.max_queue): come back when told
                        rejected[0] += 1
                        time.sleep(min(float(e.response.headers.get("Retry-After", 1)), max(0.0, stop_at - time.monotonic())))
                        continue
                    errors.append(repr(e))
                except Exception as e:  # every failure is counted and shown
                    errors.append(repr(e))
                k += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows.update({"concurrent_clients": clients, "concurrent_seconds": seconds, "concurrent_requests": done[0],
                 "concurrent_rejected_429": rejected[0], "concurrent_errors": len(errors), "first_errors": errors[:3]})
    if server is not None:
        rows["rss_after_mb"] = round(psutil.Process(os.getpid()).memory_info().rss / 2**20, 1)
    if server is not None:
        server.should_exit = True
    return _write(rows, out)


def _write(rows: dict, out: Path | None) -> str:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
    width = max(len(k) for k in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows.items())
