"""The answer log and POST /v1/feedback, for real: SQLite on disk, the app's routes, keys, origins, concurrency, crashes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import REPO, LiveServer

pytestmark = pytest.mark.timeout(300)


def with_serve(settings, **serve):
    return settings.model_copy(update={"serve": settings.serve.model_copy(update=serve)})


@pytest.fixture
def app_for(rag, embedder):
    """An app over the session's engine with the given settings; the session's engine gets its answer log back after."""
    from serve import create_app

    before = rag.answer_log
    yield lambda settings: create_app(settings, rag=rag, start=False, embedder=embedder, ui=False)
    rag.answer_log = before


def ask(client, question, **extra):
    body = {"model": "atlas-rag", "messages": [{"role": "user", "content": question}], "max_tokens": 24, **extra}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_every_answer_is_logged_with_what_it_was_made_from(corpus_index, app_for):
    from serve.answer_log import AnswerLog

    with TestClient(app_for(corpus_index)) as c:
        body = ask(c, "How much GPU memory did QLoRA need to fine-tune a 65B model?")
    row = AnswerLog.of(corpus_index).answer(body["id"])
    assert row is not None, "the completion id is the log's key"
    assert row["model"] == "atlas-rag" and row["adapter"] is None and row["language"] == "en"
    assert row["messages"][-1]["content"].startswith("How much GPU memory")
    assert row["answer"] == body["choices"][0]["message"]["content"]
    assert row["mode"] == body["grounding"]["mode"]
    assert [p["doc_id"] for p in row["passages"]] == [p["doc_id"] for p in sorted(body["sources"], key=lambda s: s["index"])]
    assert all(p["id"] and isinstance(p["score"], float) for p in row["passages"])
    prompt = "\n".join(m["content"] for m in row["prompt"])
    assert body["sources"][0]["text"][:60] in prompt, "the prompt logged is the server's own, with the passages"


def test_a_streamed_answer_is_logged_before_its_last_chunk(corpus_index, app_for):
    from serve.answer_log import AnswerLog

    log = AnswerLog.of(corpus_index)
    with TestClient(app_for(corpus_index)) as c:
        body = {"model": "atlas-rag", "messages": [{"role": "user", "content": "What does BitFit train?"}],
                "max_tokens": 24, "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            cid = events[0]["id"]
            text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
            assert log.answer(cid) is not None
        assert log.answer(cid)["answer"] == text.strip()
        assert c.post("/v1/feedback", json={"id": cid, "rating": 1}).status_code == 200


def test_feedback_is_stored_and_a_second_rating_replaces_the_first(corpus_index, app_for):
    from serve.answer_log import AnswerLog

    with TestClient(app_for(corpus_index)) as c:
        cid = ask(c, "What is LoRA?")["id"]
        r = c.post("/v1/feedback", json={"id": cid, "rating": -1, "comment": "too vague"})
        assert r.status_code == 200, r.text
        assert r.json() == {"object": "feedback", "id": cid, "rating": -1, "correction": None, "comment": "too vague"}
        r = c.post("/v1/feedback", json={"id": cid, "rating": 1, "correction": "LoRA trains low-rank matrices [1]."})
        assert r.status_code == 200
    rows = AnswerLog.of(corpus_index).answer(cid)["feedback"]
    assert rows == [{"rater": "anonymous", "rating": 1, "correction": "LoRA trains low-rank matrices [1].",
                     "comment": "too vague"}], "one row per rater: the new rating replaced the old, the comment stayed"


@pytest.mark.parametrize("body, why", [
    ({"rating": 1}, "id"),
    ({"id": "chatcmpl-x", "rating": 2}, "rating"),
    ({"id": "chatcmpl-x", "rating": "up"}, "rating"),
    ({"id": "chatcmpl-x"}, "a rating (1 or -1) or a correction"),
    ({"id": "chatcmpl-x", "correction": "   "}, "a rating (1 or -1) or a correction"),
    ({"id": "chatcmpl-x", "rating": 1, "stars": 5}, "stars"),
    ({"id": "chatcmpl-x", "rating": 1, "comment": "x" * 2001}, "comment"),
])
def test_malformed_feedback_is_a_400_naming_the_field(corpus_index, app_for, body, why):
    with TestClient(app_for(corpus_index)) as c:
        r = c.post("/v1/feedback", json=body)
    assert r.status_code == 400, r.text
    assert why in r.json()["error"]["message"]


def test_feedback_on_an_unknown_id_is_a_404(corpus_index, app_for):
    with TestClient(app_for(corpus_index)) as c:
        r = c.post("/v1/feedback", json={"id": "chatcmpl-nosuchanswer", "rating": 1})
    assert r.status_code == 404 and r.json()["error"]["code"] == "answer_not_found"


def test_with_the_log_off_nothing_is_stored_and_feedback_is_a_409(corpus_index, app_for):
    from serve.answer_log import AnswerLog

    with TestClient(app_for(with_serve(corpus_index, log_answers=False))) as c:
        cid = ask(c, "What is LoRA?")["id"]
        r = c.post("/v1/feedback", json={"id": cid, "rating": 1})
    assert r.status_code == 409 and r.json()["error"]["code"] == "answer_log_off"
    assert AnswerLog.of(corpus_index).answer(cid) is None


def test_keys_and_origins_guard_feedback_and_each_key_is_its_own_rater(corpus_index, app_for):
    from serve.answer_log import AnswerLog

    settings = with_serve(corpus_index, api_keys=["alpha-key", "beta-key"])
    with TestClient(app_for(settings)) as c:
        body = {"model": "atlas-rag", "messages": [{"role": "user", "content": "What is LoRA?"}], "max_tokens": 16}
        cid = c.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer alpha-key"}).json()["id"]
        assert c.post("/v1/feedback", json={"id": cid, "rating": 1}).status_code == 401
        foreign = {"Authorization": "Bearer alpha-key", "Origin": "http://evil.example"}
        assert c.post("/v1/feedback", json={"id": cid, "rating": 1}, headers=foreign).status_code == 403
        for key, rating in (("alpha-key", 1), ("beta-key", -1), ("alpha-key", -1)):
            r = c.post("/v1/feedback", json={"id": cid, "rating": rating}, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
    rows = AnswerLog.of(corpus_index).answer(cid)["feedback"]
    assert sorted(r["rating"] for r in rows) == [-1, -1], "two raters; alpha's second rating replaced its first"
    assert all(r["rater"].startswith("key:") and "key" not in r["rater"][4:] for r in rows), "keys are not stored"
    assert len({r["rater"] for r in rows}) == 2


def test_concurrent_feedback_from_8_clients_loses_nothing(corpus_index, app_for):
    from serve.answer_log import AnswerLog

    keys = [f"client-key-{i}" for i in range(8)]
    log = AnswerLog.of(corpus_index)
    ids = [f"chatcmpl-concurrent{i:04d}" for i in range(25)]
    for cid in ids:
        log.record({"id": cid, "model": "atlas-rag", "adapter": None, "adapter_sha256": None, "question": "q?",
                    "language": "en", "messages": [], "prompt": [], "passages": [], "answer": "a", "mode": "generated"})
    server = LiveServer(app_for(with_serve(corpus_index, api_keys=keys)))
    try:
        def rate_all(i: int) -> list[int]:
            with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {keys[i]}"}) as h:
                return [h.post("/v1/feedback", json={"id": cid, "rating": 1 if i % 2 else -1,
                                                     "comment": f"client {i}"}).status_code for cid in ids]
        with ThreadPoolExecutor(8) as pool:
            codes = [c for got in pool.map(rate_all, range(8)) for c in got]
    finally:
        server.stop()
    assert codes == [200] * 200
    stored = [f for cid in ids for f in log.answer(cid)["feedback"]]
    assert len(stored) == 200 and {f["comment"] for f in stored} == {f"client {i}" for i in range(8)}


def test_the_log_survives_a_restart_and_a_kill_9(tmp_path):
    from serve.answer_log import AnswerLog

    path = tmp_path / "answers.sqlite3"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from serve.answer_log import AnswerLog, Feedback
        log = AnswerLog({str(path)!r})
        for i in range(50):
            log.record({{"id": f"chatcmpl-{{i}}", "model": "atlas-rag", "adapter": None, "adapter_sha256": None,
                        "question": "q", "language": "en", "messages": [], "prompt": [], "passages": [],
                        "answer": "a", "mode": "generated"}})
        log.rate(Feedback("chatcmpl-49", "anonymous", -1, "better", None))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert done.returncode == -9, "the writer died by SIGKILL, with no chance to close anything"
    log = AnswerLog(path)  # a restart: a new process opens the same file
    assert log.counts() == {"answers": 50, "feedback": 1}
    assert log.answer("chatcmpl-49")["feedback"][0]["correction"] == "better"


def test_the_log_is_bounded_and_prunes_unrated_answers_first(tmp_path):
    from serve.answer_log import AnswerLog, Feedback

    log = AnswerLog(tmp_path / "answers.sqlite3", max_rows=5)
    row = {"model": "m", "adapter": None, "adapter_sha256": None, "question": "q", "language": "en", "messages": [],
           "prompt": [], "passages": [], "answer": "a", "mode": "generated"}
    for i in range(3):
        log.record({**row, "id": f"old-{i}", "created": 1000 + i})
    log.rate(Feedback("old-0", "anonymous", 1, None, None))
    for i in range(6):
        log.record({**row, "id": f"new-{i}", "created": 2000 + i})
    assert log.counts()["answers"] == 5
    assert log.answer("old-0") is not None, "the oldest answer survives because it was rated"
    assert log.answer("old-1") is None and log.answer("new-5") is not None


def test_a_damaged_log_file_is_kept_and_named_and_answers_go_on(corpus_index, app_for, tmp_path):
    # the session's engine keeps reading the corpus index; only the app's data folder (its answer log) is elsewhere
    settings = corpus_index.model_copy(update={"ingest": corpus_index.ingest.model_copy(update={"data_dir": tmp_path})})
    damaged = settings.data_dir / "answers.sqlite3"
    damaged.write_bytes(b"this is not a database, and must not be overwritten" * 100)
    before = damaged.read_bytes()
    with TestClient(app_for(settings)) as c:
        cid = ask(c, "What is LoRA?")["id"]
        r = c.post("/v1/feedback", json={"id": cid, "rating": 1})
    assert r.status_code == 503 and "answers.sqlite3" in r.json()["error"]["message"]
    assert damaged.read_bytes() == before
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(damaged).execute("SELECT * FROM answers").fetchall()


def test_an_adapter_answer_records_its_adapter_and_the_hash_of_its_weights(rag, tmp_path):
    import hashlib
    from dataclasses import replace
    from pathlib import Path

    from serve.answer_log import AnswerLog
    from serve.models import ModelSpec

    prep = rag.prepare("atlas-rag", [{"role": "user", "content": "What is LoRA?"}])
    prep = replace(prep, spec=ModelSpec("atlas-rag-lora-gemma3", True, True, "", "gemma3", Path("adapters/gemma3")))
    log, before = AnswerLog(tmp_path / "answers.sqlite3"), rag.answer_log
    rag.answer_log = log
    try:
        rag.log("chatcmpl-adapter", [{"role": "user", "content": "What is LoRA?"}], prep, "LoRA adds low-rank updates.")
    finally:
        rag.answer_log = before
    row = log.answer("chatcmpl-adapter")
    weights = REPO / "adapters" / "gemma3" / "adapter_model.safetensors"
    assert row["model"] == "atlas-rag-lora-gemma3" and row["adapter"] == "adapters/gemma3"
    assert row["adapter_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
