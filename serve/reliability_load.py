"""The traffic of `ftatlas bench reliability`: mixed clients with a ledger of uploads, an ingest beside the server,
and a kill -9 in the middle of an upload."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx

from .bench_server import ServedChild, cli
from .reliability import Tally

# Each request class has its own limit; an upload or delete may wait on the index lock behind an ingest.
TIMEOUT_S = {"chat": 120.0, "retrieve": 30.0, "upload": 180.0, "reupload": 180.0, "delete": 180.0, "ingest": 300.0}
# Client i starts at OPS[2 * i]: some chat at once, others upload, re-upload and delete before their first chat
# (which waits its turn behind one engine), so even the short run deletes.
OPS = ["upload", "retrieve", "reupload", "delete", "chat", "retrieve", "upload", "chat"]
QUESTIONS = ["What does QLoRA quantize?", "How does LoRA save memory?", "What is BitFit?", "Что такое prompt tuning?",
             "When is RAG better than fine-tuning?", "What does DPO optimize?"]


def note(tag: str, version: int, paragraphs: int = 3) -> bytes:
    """A small Markdown document whose words say which upload and version it is."""
    body = "\n\n".join(f"Reliability note {tag} version {version}, paragraph {p}: the bench uploads, re-uploads and "
                       f"deletes this text while clients ask about adapters; marker r{tag}v{version}p{p}."
                       for p in range(paragraphs))
    return f"# Reliability note {tag}\n\n{body}\n".encode()


class Load:
    """N clients mixing streamed chats, retrieves, uploads, re-uploads and deletes; a ledger of what must exist."""

    def __init__(self, url: str, headers: dict, tallies: dict[str, Tally]):
        self.url, self.headers, self.tallies = url, headers, tallies
        self.ledger: dict[str, str | None] = {}  # upload name -> its document id (None: deleted), when the answer said so
        self.unsure: set[str] = set()  # names whose last write got no clear answer
        self._lock = threading.Lock()
        self.stop_at = float("inf")  # streams still open then are closed (the queue behind one engine drains slowly)
        self.first_ok: dict[str, float] = {}  # kind -> time.monotonic() of its first answered request (warm-up)

    def run(self, clients: int, seconds: float) -> None:
        self.stop_at = stop_at = time.monotonic() + seconds
        threads = [threading.Thread(target=self._client, args=(i, stop_at), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + max(TIMEOUT_S.values()) + 30)

    def _client(self, i: int, stop_at: float) -> None:
        rnd, k, mine = random.Random(i), 2 * i, {}  # mine: name -> version
        with httpx.Client(base_url=self.url, headers=self.headers) as c:
            while time.monotonic() < stop_at:
                op = OPS[k % len(OPS)]
                k += 1
                if op == "chat":
                    self.chat(c, rnd.choice(QUESTIONS))
                elif op == "retrieve":
                    self.call(c, "retrieve", "POST", "/v1/retrieve", {200}, json={"query": rnd.choice(QUESTIONS)})
                elif op == "delete" and mine:
                    name = rnd.choice(sorted(mine))
                    doc_id = self.ledger.get(name)
                    if doc_id and self.call(c, "delete", "DELETE", f"/v1/documents/{doc_id}", {200}, name=name) == 200:
                        mine.pop(name)
                else:
                    name = rnd.choice(sorted(mine)) if op == "reupload" and mine else f"rely-{i}-{k}.md"
                    mine[name] = mine.get(name, 0) + 1
                    self.call(c, "reupload" if op == "reupload" and mine[name] > 1 else "upload", "POST",
                              "/v1/documents", {200}, name=name, files={"file": (name, note(f"{i}-{k}", mine[name]))})

    def call(self, c: httpx.Client, kind: str, method: str, path: str, expected: set[int], name: str = "", **kw) -> int | None:
        t0, status, detail = time.perf_counter(), None, ""
        try:
            r = c.request(method, path, timeout=TIMEOUT_S[kind], **kw)
            status, detail = r.status_code, r.text[:200]
        except httpx.TimeoutException as e:
            detail = repr(e)
        except httpx.HTTPError as e:
            status, detail = 0, repr(e)  # a dropped connection: counted as unexpected
        if self.tallies[kind].record(status, expected, (time.perf_counter() - t0) * 1000, detail) == "ok":
            self.first_ok.setdefault(kind, time.monotonic())
        if name:
            with self._lock:
                if status == 200:
                    body = r.json()
                    self.ledger[name] = None if kind == "delete" else (body.get("added") or body.get("updated") or [None])[0]
                    self.unsure.discard(name)
                elif status is None or status >= 500 or status == 0:
                    self.unsure.add(name)
        return status

    def chat(self, c: httpx.Client, question: str) -> None:
        """One streamed chat; a 429 (the queue is full) is the answer the API gives on purpose, then we wait as told."""
        tally, t0 = self.tallies["chat"], time.perf_counter()
        # Two passages, not five: the prompt the CPU reads first is what makes a chat slow on a busy machine.
        body = {"model": "atlas-rag", "max_tokens": 16, "stream": True, "retrieval": {"top_k": 2},
                "messages": [{"role": "user", "content": question}]}
        deadline = t0 + TIMEOUT_S["chat"]
        try:
            with c.stream("POST", "/v1/chat/completions", json=body, timeout=TIMEOUT_S["chat"]) as r:
                if r.status_code != 200:
                    r.read()
                    tally.record(r.status_code, {200, 429}, (time.perf_counter() - t0) * 1000, r.text[:200])
                    if r.status_code == 429:
                        time.sleep(min(float(r.headers.get("Retry-After", 1)), 3.0))
                    return
                for line in r.iter_lines():
                    if time.monotonic() > self.stop_at:
                        tally.cut()
                        return
                    if time.perf_counter() > deadline:
                        tally.record(None, {200}, (time.perf_counter() - t0) * 1000, "stream still open at its timeout")
                        return
                    if line.startswith("data: {") and '"error"' in line and "error" in json.loads(line[6:]):
                        tally.fail("stream_error", line[6:])
                tally.record(200, {200}, (time.perf_counter() - t0) * 1000)
                self.first_ok.setdefault("chat", time.monotonic())
        except httpx.TimeoutException as e:
            tally.record(None, {200}, (time.perf_counter() - t0) * 1000, repr(e))
        except httpx.HTTPError as e:
            tally.record(0, {200}, (time.perf_counter() - t0) * 1000, repr(e))

    def lost(self, listed: dict[str, str]) -> list[str]:
        """Ledger vs /v1/documents (upload name -> document id): what should be there and is not, or the reverse."""
        out = []
        for name, doc_id in sorted(self.ledger.items()):
            if name in self.unsure:
                continue
            if doc_id and listed.get(name) != doc_id:
                out.append(f"{name} ({doc_id}) was uploaded but is not listed")
            if doc_id is None and name in listed:
                out.append(f"{name} was deleted but is still listed")
        return out


def side_ingest(settings, data_dir: Path, folder: Path, until: float, tally: Tally, log: Path) -> None:
    """`ftatlas ingest FOLDER` in its own process, again and again with a changed file, while the server is loaded;
    none starts in the last 20 s before `until` (time.monotonic()), so the load phase ends with it."""
    version = 0
    while version == 0 or time.monotonic() < until - 20:
        version += 1
        (folder / "changing.md").write_bytes(note("folder-changing", version))
        t0 = time.perf_counter()
        with open(log, "ab") as out:
            proc = cli(settings, data_dir, "ingest", "--quiet", str(folder), stdout=out, stderr=out)
            try:
                rc = proc.wait(TIMEOUT_S["ingest"])
            except Exception:
                proc.kill()
                proc.wait()
                rc = None
        tally.record(rc, {0}, (time.perf_counter() - t0) * 1000, f"exit {rc}; see {log.name}")


def listed_uploads(url: str, headers: dict) -> dict[str, str]:
    r = httpx.get(url + "/v1/documents", headers=headers, timeout=60)
    r.raise_for_status()
    return {Path(d["path"]).name: d["id"] for d in r.json()["data"] if d.get("path", "").startswith("uploads/")}


def crash_mid_upload(server: ServedChild, headers: dict) -> dict:
    """Upload a larger document and kill -9 the server while it ingests (its file swapped in, its chunks embedding)."""
    name = "rely-crash.md"
    uploads = server.data_dir / "uploads"
    data = note("crash", 1, paragraphs=120)

    def send() -> None:
        try:
            httpx.post(server.url + "/v1/documents", headers=headers, files={"file": (name, data)}, timeout=120)
        except httpx.HTTPError:
            pass  # the server is killed under it: no answer is the expected outcome

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    stage, deadline = "not seen", time.monotonic() + 60
    while time.monotonic() < deadline and sender.is_alive():
        if (uploads / name).exists():
            stage = "ingesting (file swapped in)"
            time.sleep(0.3)  # into the embedding and the writes
            break
        if uploads.is_dir() and any(p.suffix == ".part" for p in uploads.iterdir()):
            stage = "receiving (temporary file)"
        time.sleep(0.01)
    answered_first = not sender.is_alive()
    server.kill()
    sender.join(5)
    return {"name": name, "killed_while": "after the answer" if answered_first else stage,
            "bytes": len(data)}
