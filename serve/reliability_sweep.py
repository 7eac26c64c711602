"""The bad-input sweep of `ftatlas bench reliability`: malformed requests and files, each of which must get a 4xx."""

from __future__ import annotations

import json
import os
import time

import httpx

from .reliability import Tally

MIB = 2**20
CHAT, RETRIEVE, DOCS = "/v1/chat/completions", "/v1/retrieve", "/v1/documents"
JSON = {"Content-Type": "application/json"}


def _chat(**over) -> dict:
    return {"model": "atlas-rag", "max_tokens": 8, "messages": [{"role": "user", "content": "What is LoRA?"}], **over}


def _file(name: str, data: bytes, kind: str = "text/markdown") -> dict:
    return {"files": {"file": (name, data, kind)}}


def _raw_file(name: bytes, data: bytes) -> dict:
    """A multipart body written by hand: httpx would percent-encode a control character in the file name."""
    body = (b'--rely\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
            b"Content-Type: text/markdown\r\n\r\n" + data + b"\r\n--rely--\r\n")
    return {"content": body, "headers": {"Content-Type": "multipart/form-data; boundary=rely"}}


def cases(max_upload_mb: float, generate: bool = True) -> list[tuple[str, str, str, dict, set[int]]]:
    """(name, method, path, httpx kwargs, the statuses that count as a clear refusal).

    Hardening I's classes (tests/test_doors.py, tests/test_api.py) plus random bytes, oversized bodies, deep JSON,
    invalid UTF-8 and 10,000-character queries. A long query may also be answered (200): it is a valid question.
    generate=False leaves out the one case that makes the model read a long prompt (a minute on a busy CPU).
    """
    rnd = os.urandom(4096)
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    long_q = ("how does low-rank adaptation save memory " * 250)[:10_000]
    big = int((max_upload_mb + 2) * MIB)
    refused = {400, 404, 413, 422}
    return [
        ("chat: not JSON", "POST", CHAT, {"content": b"{not json", "headers": JSON}, refused),
        ("chat: random bytes", "POST", CHAT, {"content": rnd, "headers": JSON}, refused),
        ("chat: invalid UTF-8", "POST", CHAT, {"content": b'{"model": "atlas-rag", "messages": [{"role": "user", '
                                                          b'"content": "\xff\xfe\xc3("}]}', "headers": JSON}, refused),
        ("chat: deep JSON", "POST", CHAT, {"content": deep, "headers": JSON}, refused),
        ("chat: oversized body", "POST", CHAT, {"content": b'{"x": "' + b"a" * big + b'"}', "headers": JSON}, {413}),
        ("chat: no messages", "POST", CHAT, {"json": _chat(messages=[])}, refused),
        ("chat: wrong types", "POST", CHAT, {"json": _chat(max_tokens="lots", messages="hi")}, refused),
        ("chat: negative max_tokens", "POST", CHAT, {"json": _chat(max_tokens=-1)}, refused),
        ("chat: n=2", "POST", CHAT, {"json": _chat(n=2)}, refused),
        ("chat: tools", "POST", CHAT, {"json": _chat(tools=[{"type": "function", "function": {"name": "f"}}])}, refused),
        ("chat: logprobs", "POST", CHAT, {"json": _chat(logprobs=True)}, refused),
        ("chat: unknown model", "POST", CHAT, {"json": _chat(model="gpt-17")}, refused),
        ("chat: bad role", "POST", CHAT, {"json": _chat(messages=[{"role": "wizard", "content": "x"}])}, refused),
        *([("chat: 10,000-char question", "POST", CHAT,
            {"json": _chat(messages=[{"role": "user", "content": long_q}])}, refused | {200})] if generate else []),
        ("retrieve: 10,000-char query", "POST", RETRIEVE, {"json": {"query": long_q}}, refused | {200}),
        ("retrieve: empty query", "POST", RETRIEVE, {"json": {"query": ""}}, refused),
        ("retrieve: top_k 10^6", "POST", RETRIEVE, {"json": {"query": "LoRA", "top_k": 10**6}}, refused),
        ("retrieve: unknown field", "POST", RETRIEVE, {"json": {"query": "LoRA", "retrieval": {"mode": "magic"}}}, refused),
        ("embeddings: wrong model", "POST", "/v1/embeddings", {"json": {"model": "x", "input": "LoRA"}}, refused),
        ("upload: name '.'", "POST", DOCS, _file(".", b"# Note\n\ntext"), refused),
        ("upload: name '..'", "POST", DOCS, _file("..", b"# Note\n\ntext"), refused),
        ("upload: 300-char name", "POST", DOCS, _file("x" * 300 + ".md", b"# Note\n\ntext"), refused),
        ("upload: .exe", "POST", DOCS, _file("tool.exe", b"MZ\x90\x00"), refused),
        ("upload: control chars", "POST", DOCS, _raw_file(b"a\x01b.md", b"# Note\n\ntext"), refused),
        ("upload: invalid UTF-8 name", "POST", DOCS, _raw_file(b"\xff\xfe.md", b"# Note\n\ntext"),
         refused | {200}),  # Starlette reads header bytes as Latin-1: a name it can store
        ("upload: empty file", "POST", DOCS, _file("empty.md", b""), refused),
        ("upload: binary .md", "POST", DOCS, _file("binary.md", b"\x00\x01binary\x00" * 50), refused),
        ("upload: random bytes .txt", "POST", DOCS, _file("random.txt", rnd, "text/plain"), refused),
        ("upload: broken PDF", "POST", DOCS, _file("broken.pdf", b"%PDF-1.4 not really", "application/pdf"), refused),
        ("upload: over the limit", "POST", DOCS, _file("huge.md", b"word " * (big // 5)), {413}),
        ("upload: no file field", "POST", DOCS, {"data": {"x": "y"}}, refused),
        ("upload: not multipart", "POST", DOCS, {"json": {"file": "notes.md"}}, refused),
        ("delete: unknown document", "DELETE", DOCS + "/no-such-doc", {}, refused),
        ("write from another origin", "POST", RETRIEVE,
         {"json": {"query": "LoRA"}, "headers": {"Origin": "http://evil.example"}}, {403}),
    ]


def sweep(c: httpx.Client, max_upload_mb: float, tally: Tally, generate: bool = True) -> list[dict]:
    """Send every case once through `c` (its base_url, headers and timeout set); a 5xx, an unexpected status, a 4xx
    without an OpenAI-shaped message or no answer within the client's timeout is a failure of the sweep."""
    rows = []
    for name, method, path, kwargs, ok in cases(max_upload_mb, generate):
        t0, status, detail = time.perf_counter(), None, ""
        try:
            r = c.request(method, path, **kwargs)  # the client's own timeout: set by the caller
            status, detail = r.status_code, r.text[:300]
            if 400 <= status < 500 and not _clear_error(r):
                detail, status = f"no OpenAI-shaped error message: {detail}", -status  # counted as unexpected
        except httpx.TimeoutException as e:
            detail = f"no answer in {timeout_s:g} s: {e!r}"
        except httpx.HTTPError as e:
            detail, status = f"connection: {e!r}", 0
        ms = (time.perf_counter() - t0) * 1000
        verdict = tally.record(status, ok, ms, f"{name}: {detail}")
        rows.append({"case": name, "status": status, "ms": round(ms, 1), "verdict": verdict,
                     "answer": "" if status == 200 else detail[:160]})
    return rows


def _clear_error(r: httpx.Response) -> bool:
    try:
        err = r.json()["error"]
        return isinstance(err["message"], str) and bool(err["message"].strip())
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return False
