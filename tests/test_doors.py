"""Every door locked: keys on every route (UI and Gradio too), own-origin writes, checked upload names and sizes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from ftatlas.settings import SettingsError, load_settings

from conftest import REPO, make_settings

pytestmark = pytest.mark.timeout(300)

BASE = "http://127.0.0.1:7860"  # the address the test client plays the server at
NOTE = b"# Team notes\n\nOur house rule: the zebra adapter uses rank 12 for every task.\n"


def with_serve(settings, **over):
    return settings.model_copy(update={"serve": settings.serve.model_copy(update=over)})


def empty_settings(tmp_path):
    """Test settings over an empty manifest: a plain ingest (what a start does) takes seconds, not the corpus."""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("documents: []\n", encoding="utf-8")
    return make_settings(tmp_path / "data", ingest={"manifest": str(manifest)})


@pytest.fixture
def docs_app(tmp_path, embedder):
    """An app over an empty index of its own (uploads and deletes change it); returns (settings, make_client)."""
    from serve import RagEngine, create_app

    base = empty_settings(tmp_path)
    rag = RagEngine(base, embedder=embedder)

    def client(ui: bool = False, **serve_over) -> TestClient:
        settings = with_serve(base, **serve_over)
        return TestClient(create_app(settings, rag=rag, start=False, embedder=embedder, ui=ui), base_url=BASE,
                          raise_server_exceptions=False)

    return base, client


def is_openai_error(r, status: int, code: str | None = None) -> bool:
    err = r.json().get("error", {})
    return r.status_code == status and set(err) == {"message", "type", "code"} and (code is None or err["code"] == code)


def upload(c, name: str, data: bytes = NOTE, **kw):
    return c.post("/v1/documents", files={"file": (name, data, "text/markdown")}, **kw)


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("keys", [[""], ["   "], ["good", ""]])
def test_blank_api_keys_are_refused_by_settings(keys):
    with pytest.raises(SettingsError, match="api_keys.*empty or whitespace-only"):
        load_settings("test", root=REPO, serve={"api_keys": keys})


@pytest.mark.timeout(120)
def test_serve_refuses_to_start_with_a_blank_key(tmp_path):
    env = {**os.environ, "FTATLAS_SERVE__API_KEYS": '[""]', "FTATLAS_INGEST__DATA_DIR": str(tmp_path / "data"),
           "FTATLAS_SERVE__PORT": "1"}  # were it to start anyway, it could not listen: the test never hangs on a server
    r = subprocess.run([sys.executable, "-m", "ftatlas.cli", "--profile", "test", "serve"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode != 0
    assert "api_keys" in r.stderr and "empty or whitespace-only" in r.stderr and "Traceback" not in r.stderr


def test_a_blank_key_that_slipped_past_settings_still_opens_nothing(docs_app):
    _, client = docs_app
    with client(api_keys=[""]) as c:  # model_copy skips validation: the gate must not trust it
        assert c.get("/v1/documents").status_code == 401
        assert c.get("/v1/documents", headers={"Authorization": "Bearer "}).status_code == 401


def test_ui_and_gradio_routes_need_a_key_or_the_login_cookie(docs_app):
    settings, client = docs_app
    with client(ui=True, api_keys=["s3cret", "other"]) as c:
        health = c.get("/health")  # probes stay open: no key asked (503 here only because this index is empty)
        assert health.status_code in (200, 503) and "status" in health.json()
        page = c.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        for path in ("/config", "/gradio_api/info", "/gradio_api/config", "/info", "/gradio_api/queue/status"):
            assert is_openai_error(c.get(path), 401, "invalid_api_key"), path
        # the unauthenticated Gradio API call that once deleted a corpus document
        assert c.post("/gradio_api/call/delete", json={"data": ["anything"]}).status_code == 401
        assert c.post("/gradio_api/upload", files={"files": ("n.md", NOTE)}).status_code == 401
        assert c.post("/gradio_api/queue/join", json={"fn_index": 0, "data": [], "session_hash": "x"}).status_code == 401

        login = c.get("/login")
        assert login.status_code == 200 and 'type="password"' in login.text
        assert c.post("/login", data={"password": "wrong"}, follow_redirects=False).status_code == 401
        assert c.post("/login", data={"password": ""}, follow_redirects=False).status_code == 401
        assert not c.cookies
        ok = c.post("/login", data={"password": "other"}, follow_redirects=False)
        assert ok.status_code == 303 and "ftatlas_session" in ok.cookies
        assert "httponly" in ok.headers["set-cookie"].lower() and "samesite=strict" in ok.headers["set-cookie"].lower()
        assert c.get("/config").status_code == 200
        assert "/delete" in c.get("/gradio_api/info").text
        assert c.get("/", headers={"Accept": "text/html"}).status_code == 200
        assert c.get("/v1/documents").status_code == 401  # the API takes Bearer keys, not the UI's cookie
        c.cookies.clear()
        assert c.get("/config", headers={"Cookie": "ftatlas_session=forged.0123abcd"}).status_code == 401
    with client(ui=True, api_keys=["s3cret"]) as c:
        assert c.get("/config", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/documents", headers={"Authorization": "Bearer s3cret"}).status_code == 200


# ---------------------------------------------------------------- origins


def test_cross_origin_writes_are_refused_in_openai_shape(docs_app):
    settings, client = docs_app
    evil = {"Origin": "http://evil.example"}
    with client(ui=True) as c:
        r = upload(c, "planted.md", headers=evil)
        assert is_openai_error(r, 403, "origin_not_allowed") and "evil.example" in r.json()["error"]["message"]
        assert c.get("/v1/documents").json()["data"] == []  # nothing was stored or ingested
        assert not (settings.data_dir / "uploads" / "planted.md").exists()
        # DNS rebinding: a foreign name that resolves to this server sends a matching Host and Origin
        rebound = {"Origin": "http://evil.example:7860", "Host": "evil.example:7860"}
        assert is_openai_error(upload(c, "planted.md", headers=rebound), 403, "origin_not_allowed")
        assert is_openai_error(c.post("/gradio_api/upload", files={"files": ("n.md", NOTE)}, headers=evil), 403)
        assert is_openai_error(c.post("/gradio_api/queue/join", json={"data": []}, headers=evil), 403)
        assert is_openai_error(c.post("/v1/chat/completions", json={}, headers=evil), 403)

        own = upload(c, "notes.md", headers={"Origin": BASE})
        assert own.status_code == 200, own.text
        doc_id = own.json()["added"][0]
        assert is_openai_error(c.delete(f"/v1/documents/{doc_id}", headers=evil), 403)
        assert [d["id"] for d in c.get("/v1/documents").json()["data"]] == [doc_id]
        assert c.delete(f"/v1/documents/{doc_id}").status_code == 200  # no Origin: curl, the openai client
        assert c.get("/health", headers=evil).status_code in (200, 503)  # reads are not writes
    with client(allowed_origins=["http://Tools.example:3000/"]) as c:
        assert upload(c, "notes.md", headers={"Origin": "http://tools.example:3000"}).status_code == 200
        assert upload(c, "notes.md", headers=evil).status_code == 403


def test_allowed_origins_must_be_origins():
    with pytest.raises(SettingsError, match="allowed_origins"):
        load_settings("test", root=REPO, serve={"allowed_origins": ["evil.example/path"]})


# ---------------------------------------------------------------- upload names, sizes and paths


@pytest.mark.parametrize("name", [".", "..", "x" * 300 + ".md", "notes.exe"])
def test_bad_upload_names_are_400_and_store_nothing(docs_app, name):
    settings, client = docs_app
    with client() as c:
        r = upload(c, name)
        assert is_openai_error(r, 400), (r.status_code, r.text)
        assert c.get("/v1/documents").json()["data"] == []
    uploads = settings.data_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_an_upload_path_cannot_leave_the_upload_folder(docs_app):
    settings, client = docs_app
    with client() as c:
        r = upload(c, "../../../escape.md")
        assert r.status_code == 200, r.text
        [doc] = c.get("/v1/documents").json()["data"]
    assert doc["path"] == "uploads/escape.md"  # relative to the data folder: no server path is shown
    assert (settings.data_dir / "uploads" / "escape.md").read_bytes() == NOTE


def test_documents_show_paths_relative_to_the_data_folder(docs_app):
    settings, client = docs_app
    with client() as c:
        upload(c, "notes.md")
        body = c.get("/v1/documents").text
    assert str(settings.data_dir) not in body and str(REPO) not in body
    assert json.loads(body)["data"][0]["path"] == "uploads/notes.md"


def test_uploads_over_the_limit_are_413(docs_app):
    settings, client = docs_app
    with client(ui=True, max_upload_mb=1) as c:
        within_slack = upload(c, "big.md", b"# Big\n\n" + b"word " * (300 * 1024))  # 1.5 MiB: the handler's check
        assert is_openai_error(within_slack, 413) and "1 MiB" in within_slack.json()["error"]["message"]
        huge = upload(c, "huge.md", b"word " * (1024 * 1024))  # 5 MiB: the middleware's
        assert is_openai_error(huge, 413, "request_too_large")
        gradio = c.post("/gradio_api/upload", files={"files": ("big.md", b"w" * (1536 * 1024))})
        assert gradio.status_code == 413  # Gradio's own max_file_size
        assert upload(c, "small.md").status_code == 200
    assert sorted(p.name for p in (settings.data_dir / "uploads").iterdir()) == ["small.md"]


def test_the_body_limit_answers_before_the_body_is_read(docs_app):
    """At the ASGI level: the 413 goes out after at most the limit plus 1 MiB (plus one chunk) has been read."""
    _, client = docs_app
    with client(max_upload_mb=1) as c:
        app = c.app
    chunk = b"x" * 65536
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.md"\r\nContent-Type: text/plain\r\n\r\n'
    read = {"bytes": 0}

    async def receive():  # a well-formed multipart start, then a file far over the limit
        await asyncio.sleep(0)
        body = head if read["bytes"] == 0 else chunk
        read["bytes"] += len(body)
        return {"type": "http.request", "body": body, "more_body": read["bytes"] < 3 * 2**20}

    sent = []

    async def send(msg):
        sent.append(msg)

    def call(headers):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/v1/documents", "raw_path": b"/v1/documents", "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"127.0.0.1:7860"), *headers], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 7860)}
        sent.clear()
        read["bytes"] = 0
        asyncio.run(asyncio.wait_for(app(scope, receive, send), 60))
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    assert call([(b"content-type", b"multipart/form-data; boundary=b")]) == 413
    assert 2 * 2**20 < read["bytes"] <= 2 * 2**20 + len(chunk)  # limit = max_upload_mb + 1 MiB
    assert call([(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"99999999")]) == 413
    assert read["bytes"] == 0  # a declared length over the limit is refused unread


# ---------------------------------------------------------------- no document lost


def test_a_failed_reupload_leaves_the_earlier_version_whole_and_served(docs_app, embedder):
    from ingest import ingest, list_documents

    settings, client = docs_app
    stored = settings.data_dir / "uploads" / "notes.md"
    with client() as c:
        doc_id = upload(c, "notes.md").json()["added"][0]
        for bad in (b"", b"\x00\x01binary\x00" * 50):
            r = upload(c, "notes.md", bad)
            assert is_openai_error(r, 400) and "notes.md" in r.json()["error"]["message"], r.text
            assert stored.read_bytes() == NOTE
            hits = c.post("/v1/retrieve", json={"query": "zebra adapter rank"}).json()["chunks"]
            assert hits and hits[0]["doc_id"] == doc_id and "rank 12" in hits[0]["text"]
        assert sorted(p.name for p in stored.parent.iterdir()) == ["notes.md"]  # no temporary file left behind
    again = ingest(settings, embedder=embedder, progress=False)  # what the next start does
    assert doc_id in list_documents(settings) and not again.removed and not again.failed

    with client() as c:  # a good re-upload replaces it in place: the same document, updated
        r = upload(c, "notes.md", NOTE.replace(b"rank 12", b"rank 16"))
        assert r.json()["updated"] == [doc_id] and not r.json()["added"]
        assert "rank 16" in c.post("/v1/retrieve", json={"query": "zebra adapter rank"}).json()["chunks"][0]["text"]


def test_ui_uploads_are_stored_under_the_data_folder_like_api_uploads(tmp_path, embedder):
    from gradio_client import Client, handle_file

    from ingest import list_documents
    from serve import RagEngine, create_app

    from conftest import LiveServer

    settings = empty_settings(tmp_path)
    server = LiveServer(create_app(settings, rag=RagEngine(settings, embedder=embedder), start=False, embedder=embedder))
    try:
        gradio = Client(server.url + "/", verbose=False, download_files=False)
        for version, text in enumerate(("rank 12", "rank 16")):
            src = tmp_path / f"v{version}" / "ui-notes.md"
            src.parent.mkdir()
            src.write_bytes(NOTE.replace(b"rank 12", text.encode()))
            _, status = gradio.predict(handle_file(str(src)), api_name="/upload")
            assert "1 added" in status if version == 0 else "1 updated" in status, status
        docs = list_documents(settings)
        assert [d["path"] for d in docs.values()] == ["uploads/ui-notes.md"]  # one document, in the data folder
        assert b"rank 16" in (settings.data_dir / "uploads" / "ui-notes.md").read_bytes()
    finally:
        server.stop()


def test_an_upload_or_delete_that_waits_out_the_index_lock_is_a_503_with_retry_after(tmp_path, embedder):
    import fcntl

    from serve import RagEngine, create_app

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("documents: []\n", encoding="utf-8")
    settings = make_settings(tmp_path / "data", ingest={"manifest": str(manifest), "lock_timeout_s": 0.5})
    c = TestClient(create_app(settings, rag=RagEngine(settings, embedder=embedder), start=False, embedder=embedder,
                              ui=False), base_url=BASE, raise_server_exceptions=False)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "index.lock", "w") as held:  # another ingest holds the index
        fcntl.flock(held, fcntl.LOCK_EX)
        up, gone = upload(c, "notes.md"), c.delete("/v1/documents/notes")
    for r in (up, gone):  # not a 500, nor "document not found": busy, try again
        assert is_openai_error(r, 503, "index_busy") and r.headers["Retry-After"] == "5"
        assert "lock_timeout_s" in r.json()["error"]["message"]
    assert upload(c, "notes.md").status_code == 200  # and once the lock is free the same upload lands
