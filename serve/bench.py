"""`ftatlas bench serve`: retrieval latency, TTFT and tokens/s via the API vs llama.cpp direct, memory, concurrency."""

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


def _stream(url: str, body: dict, timeout: float = 300) -> tuple[float, str]:
    """(seconds to the first content token, the streamed text) for one streaming chat completion."""
    t0, first, text = time.perf_counter(), None, ""
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=timeout) as r:
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


def run_bench(settings, url: str | None = None, seconds: float = 60, clients: int = 8, out: Path | None = None) -> str:
    import psutil

    server = None
    if url is None:  # in-process: the real app on a free port in this process
        import uvicorn

        from . import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = create_app(settings, ui=True)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    rows: dict = {"url": url}

    lat = []
    for q in _questions(settings, 50):
        t0 = time.perf_counter()
        httpx.post(url + "/v1/retrieve", json={"query": q}, timeout=60).raise_for_status()
        lat.append((time.perf_counter() - t0) * 1000)
    rows["retrieval_p50_ms"], rows["retrieval_p95_ms"] = round(_percentile(lat, 0.5), 1), round(_percentile(lat, 0.95), 1)

    # Same prompt both ways: the closed-book mode sends the messages straight to the engine.
    question = "Explain in detail how low-rank adaptation of large language models works and why it saves memory."
    body = {"model": "atlas-base", "max_tokens": 128, "temperature": 0, "messages": [{"role": "user", "content": question}]}
    ttft_api, text_api = _stream(url, body)
    t_api = time.perf_counter()
    _, text_api = _stream(url, body)
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
        k = i
        while time.monotonic() < stop_at:
            try:
                _stream(url, {"model": "atlas-rag", "max_tokens": 32, "messages": [{"role": "user", "content": qs[k % len(qs)]}]})
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
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
    width = max(len(k) for k in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows.items())
