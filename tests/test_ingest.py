"""Ingestion end to end: real Chroma (local and server), the real bundled embedder, real files, real child processes."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from ftatlas.settings import load_settings
from ingest import FetchError, IngestError, delete_document, fetch_papers, ingest, list_documents
from ingest.glossary import Glossary, mine_pairs
from ingest.keyword import KeywordIndex
from ingest.sources import read_manifest, user_doc_id
from ingest.state import load_state
from ingest.store import Store, open_collection

from conftest import REPO, make_settings

CLI = [sys.executable, "-m", "ftatlas.cli", "--profile", "test"]


# ---------------------------------------------------------------- helpers


def doc_text(name: str, variant: str = "first") -> str:
    """A small paper card that chunks into several passages at 64 tokens."""
    parts = [f"# {name.title()} method\n"]
    for k in range(3):
        parts.append(f"## Part {k}\n")
        parts.append(
            " ".join(f"The {name} method, {variant} edition, states fact {k}.{i} about adapting models." for i in range(4))
            + "\n"
        )
    return "\n".join(parts)


def write_manifest(root: Path, entries: list[dict]) -> None:
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    (root / "corpus" / "manifest.yaml").write_text(yaml.safe_dump({"documents": entries}, allow_unicode=True), encoding="utf-8")


def entry(doc_id: str, **extra) -> dict:
    return {"id": doc_id, "title": f"{doc_id.title()} paper", "path": f"docs/{doc_id}.md", "language": "en",
            "kind": "paper-card", "source": f"https://example.org/{doc_id}", **extra}


def make_root(root: Path, docs: dict[str, str], extra: dict[str, dict] | None = None, **ingest_over):
    """A project root of its own: the repo's settings files, a tiny manifest and its Markdown files."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("settings.yaml", "settings-test.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / "docs").mkdir(exist_ok=True)
    for doc_id, text in docs.items():
        (root / "docs" / f"{doc_id}.md").write_text(text, encoding="utf-8")
    write_manifest(root, [entry(d, **(extra or {}).get(d, {})) for d in docs])
    return load_settings("test", root=root, ingest={"chunk_tokens": 64, "chunk_overlap": 8, **ingest_over})


def stored(settings) -> dict[str, dict]:
    """chunk id -> metadata plus its text, read straight from Chroma."""
    got = open_collection(settings).get(include=["metadatas", "documents"])
    return {i: {**m, "text": d} for i, m, d in zip(got["ids"], got["metadatas"], got["documents"])}


def bm25_ids(settings) -> list[str]:
    return KeywordIndex(settings.data_dir / "bm25").load().ids


def by_doc(chunks: dict[str, dict]) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for c in chunks.values():
        out[c["doc_key"]].append(c)
    return dict(out)


def assert_consistent(settings) -> dict[str, list[dict]]:
    """BM25 holds exactly Chroma's ids; every document has each of its n_chunks once, from one version, no repeats."""
    chunks = stored(settings)
    assert bm25_ids(settings) == sorted(chunks)
    docs = by_doc(chunks)
    for key, cs in docs.items():
        assert sorted(c["chunk_index"] for c in cs) == list(range(cs[0]["n_chunks"])), key
        assert len({c["fingerprint"] for c in cs}) == 1, key
        texts = [c["text"] for c in cs]
        assert len(texts) == len(set(texts)), f"{key}: duplicate chunk texts"
    return docs


def run(settings, paths=None, embedder=None):
    return ingest(settings, paths, embedder=embedder, progress=False)


def make_pdf(path: Path, title: str, lines: list[str]) -> None:
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path))
    c.setTitle(title)
    for i, line in enumerate(lines):
        c.drawString(72, 760 - 18 * i, line)
    c.showPage()
    c.save()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(args: list[str], data_dir: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTATLAS_INGEST__DATA_DIR": str(data_dir)}
    return subprocess.run(CLI + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- the shipped corpus


def test_corpus_index_holds_every_manifest_document(corpus_index, embedder):
    manifest = {d["id"]: d for d in read_manifest(corpus_index)}
    got = open_collection(corpus_index).get(include=["metadatas", "embeddings"])
    metas = got["metadatas"]
    assert {m["doc_id"] for m in metas} == set(manifest)
    for m in metas:
        d = manifest[m["doc_id"]]
        assert m["title"] == d["title"]
        assert m["source"] == d["source"]
        assert isinstance(m["section"], str)
    assert any(" > " in m["section"] for m in metas if m["doc_id"] == "atlas")
    counts = Counter(m["doc_key"] for m in metas)
    assert all(counts[m["doc_key"]] == m["n_chunks"] for m in metas)

    vectors = np.asarray(got["embeddings"])
    assert vectors.shape == (len(metas), embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_corpus_bm25_matches_chroma_and_finds_the_paper(corpus_index):
    docs = assert_consistent(corpus_index)
    kw = KeywordIndex(corpus_index.data_dir / "bm25").load()
    assert kw.fingerprint == Store(open_collection(corpus_index)).fingerprint()
    chunks = stored(corpus_index)
    hits = kw.search("QLoRA 4-bit NormalFloat NF4 double quantization paged optimizers", 3)
    assert hits and chunks[hits[0][0]]["doc_id"] == "qlora"
    state = load_state(corpus_index)
    assert state.complete and {k: d["chunks"] for k, d in state.documents.items()} == {k: len(v) for k, v in docs.items()}


# ---------------------------------------------------------------- incremental runs


def test_incremental_runs_add_skip_update_and_remove(tmp_path, embedder):
    s = make_root(tmp_path / "root", {d: doc_text(d) for d in ("alpha", "beta", "gamma")})

    first = run(s, embedder=embedder)
    assert sorted(first.added) == ["alpha", "beta", "gamma"] and not first.failed
    docs = assert_consistent(s)
    assert all(len(docs[d]) >= 2 for d in ("alpha", "beta", "gamma"))
    assert first.chunks == first.chunks_written == len(stored(s))
    before = stored(s)

    second = run(s, embedder=embedder)
    assert second.skipped == ["alpha", "beta", "gamma"]
    assert second.chunks_written == 0 and not second.changed
    assert stored(s) == before

    (s.root / "docs" / "beta.md").write_text(doc_text("beta", "second"), encoding="utf-8")
    third = run(s, embedder=embedder)
    assert third.updated == ["beta"] and sorted(third.skipped) == ["alpha", "gamma"] and not third.added
    after = stored(s)
    old_beta = {cid for cid, c in before.items() if c["doc_key"] == "beta"}
    new_beta = {cid for cid, c in after.items() if c["doc_key"] == "beta"}
    assert old_beta and new_beta and not old_beta & new_beta
    assert all("second edition" in after[cid]["text"] for cid in new_beta if "fact" in after[cid]["text"])
    assert not any("first edition" in after[cid]["text"] for cid in new_beta)
    assert third.chunks_written == len(new_beta)
    assert {k: v for k, v in after.items() if v["doc_key"] != "beta"} == {
        k: v for k, v in before.items() if v["doc_key"] != "beta"
    }
    assert_consistent(s)

    write_manifest(s.root, [entry("alpha"), entry("beta")])
    fourth = run(s, embedder=embedder)
    assert fourth.removed == ["gamma"] and fourth.chunks_written == 0
    assert not any(c["doc_key"] == "gamma" for c in stored(s).values())
    assert not any(i.startswith("gamma:") for i in bm25_ids(s))
    assert set(assert_consistent(s)) == {"alpha", "beta"}
    state = load_state(s)
    assert state.complete and set(state.documents) == {"alpha", "beta"}


def test_changed_chunk_settings_rechunk_every_document(tmp_path, embedder):
    s = make_root(tmp_path / "root", {d: doc_text(d) for d in ("alpha", "beta")})
    run(s, embedder=embedder)
    before = set(stored(s))
    bigger = s.model_copy(update={"ingest": s.ingest.model_copy(update={"chunk_tokens": 120})})
    summary = run(bigger, embedder=embedder)
    assert summary.updated == ["alpha", "beta"]
    after = assert_consistent(bigger)
    assert not before & set(stored(bigger))
    assert all(len(after[d]) >= 1 for d in ("alpha", "beta"))


# ---------------------------------------------------------------- user paths


def test_user_folder_is_ingested_remembered_and_dropped_when_deleted(tmp_path, embedder):
    s = make_root(tmp_path / "root", {"alpha": doc_text("alpha")})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("# My notes\n\nQuokka adapters are tiny bottleneck layers.\n", encoding="utf-8")
    (mine / "plain.txt").write_text("Plain text about wombat prefix tuning.\n", encoding="utf-8")
    (mine / "page.html").write_text(
        "<html><head><title>Platypus page</title><script>var tracker = 1;</script></head>"
        "<body><nav>Home | Menu</nav><h1>Platypus</h1><p>Platypus prompt tuning learns soft tokens.</p>"
        "<footer>Copyright footer</footer></body></html>",
        encoding="utf-8",
    )
    make_pdf(mine / "paper.pdf", "Echidna paper", ["Echidna bias tuning changes only the bias terms."])
    (mine / "sheet.xlsx").write_bytes(b"PK\x03\x04 not a supported type")
    files = {n: mine / n for n in ("notes.md", "plain.txt", "page.html", "paper.pdf")}
    keys = {n: user_doc_id(p) for n, p in files.items()}

    first = run(s, [mine], embedder=embedder)
    assert sorted(first.added) == sorted(keys.values()) and not first.failed
    docs = list_documents(s)
    assert set(docs) == set(keys.values())
    assert all(docs[k]["kind"] == "user" and docs[k]["doc_id"] == k for k in keys.values())
    texts = {k: " ".join(c["text"] for c in cs) for k, cs in by_doc(stored(s)).items()}
    assert "Quokka" in texts[keys["notes.md"]]
    assert "wombat" in texts[keys["plain.txt"]]
    page = texts[keys["page.html"]]
    assert "Platypus prompt tuning" in page
    assert not any(junk in page for junk in ("tracker", "Menu", "Copyright"))
    assert "Echidna bias tuning" in texts[keys["paper.pdf"]]
    assert docs[keys["notes.md"]]["title"] == "My notes"
    assert docs[keys["page.html"]]["title"] == "Platypus page"
    assert docs[keys["paper.pdf"]]["title"] == "Echidna paper"
    assert_consistent(s)

    # a later run without paths ingests the manifest and keeps the remembered folder, picking up a new file
    (mine / "later.md").write_text("# Later\n\nNumbat notes written after the first run.\n", encoding="utf-8")
    second = run(s, embedder=embedder)
    assert sorted(second.added) == sorted(["alpha", user_doc_id(mine / "later.md")])
    assert sorted(second.skipped) == sorted(keys.values()) and not second.removed

    files["plain.txt"].unlink()
    third = run(s, embedder=embedder)
    assert third.removed == [keys["plain.txt"]]
    assert keys["plain.txt"] not in list_documents(s)
    assert not any(i.startswith(keys["plain.txt"] + ":") for i in bm25_ids(s))
    assert set(assert_consistent(s)) == {"alpha", user_doc_id(mine / "later.md")} | (set(keys.values()) - {keys["plain.txt"]})


def test_bad_files_are_named_and_good_ones_still_ingest(tmp_path, embedder):
    s = make_root(tmp_path / "root", {})
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "good.md").write_text("# Good\n\nA perfectly fine note about LoRA ranks.\n", encoding="utf-8")
    (mixed / "good.txt").write_text("Another fine note, about adapters.\n", encoding="utf-8")
    (mixed / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (mixed / "x.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + np.random.default_rng(0).bytes(512))
    (mixed / "empty.md").write_bytes(b"")
    (mixed / "x.md").mkdir()
    (mixed / "legacy.txt").write_bytes("Заметки в старой кодировке cp1251.".encode("cp1251"))
    missing = tmp_path / "missing.md"

    summary = run(s, [mixed, missing], embedder=embedder)
    failed = dict(summary.failed)
    expected = {
        "broken.pdf": "corrupt PDF",
        "x.txt": "binary",
        "empty.md": "empty file",
        "x.md": "not a regular file",
        "legacy.txt": "not UTF-8",
    }
    assert set(failed) == {str(mixed / n) for n in expected} | {str(missing)}
    for name, why in expected.items():
        assert why in failed[str(mixed / name)], (name, failed[str(mixed / name)])
    assert "no such file" in failed[str(missing)]
    assert sorted(summary.added) == sorted([user_doc_id(mixed / "good.md"), user_doc_id(mixed / "good.txt")])
    assert set(assert_consistent(s)) == set(summary.added)
    assert all(name in summary.text() for name in expected)


# ---------------------------------------------------------------- delete


def test_delete_document_removes_it_from_chroma_and_bm25(tmp_path, embedder):
    s = make_root(tmp_path / "root", {d: doc_text(d) for d in ("alpha", "beta")})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "note.md").write_text("# Note\n\nA note about dingo distillation.\n", encoding="utf-8")
    run(s, embedder=embedder)
    run(s, [mine], embedder=embedder)
    note = user_doc_id(mine / "note.md")

    assert delete_document(s, "beta") == ["beta"]
    assert delete_document(s, note) == [note]
    assert set(list_documents(s)) == {"alpha"}
    assert set(assert_consistent(s)) == {"alpha"}
    state = load_state(s)
    assert state.complete and set(state.documents) == {"alpha"}

    with pytest.raises(IngestError, match="nosuch"):
        delete_document(s, "nosuch")

    # a deleted user file stays deleted although its folder is remembered
    again = run(s, embedder=embedder)
    assert note not in again.added and note not in list_documents(s)


def test_deleting_a_manifest_document_lasts_until_its_path_is_ingested_again(tmp_path, embedder):
    s = make_root(tmp_path / "root", {d: doc_text(d) for d in ("alpha", "beta")})
    run(s, embedder=embedder)
    assert delete_document(s, "beta") == ["beta"]

    again = run(s, embedder=embedder)  # every `serve` start and every `ask` runs this
    assert "beta" not in again.added and set(list_documents(s)) == {"alpha"} and not again.failed
    assert run(s, embedder=embedder).chunks_written == 0  # and it stays a no-op

    back = run(s, [s.root / "docs" / "beta.md"], embedder=embedder)
    assert back.added == ["beta"]  # as the manifest document itself, not a user copy of it
    assert set(list_documents(s)) == {"alpha", "beta"} and list_documents(s)["beta"]["kind"] == "paper-card"
    assert run(s, embedder=embedder).skipped == ["alpha", "beta"]
    assert set(assert_consistent(s)) == {"alpha", "beta"}


def test_a_path_that_failed_is_not_remembered_and_can_be_forgotten(tmp_path, embedder):
    s = make_root(tmp_path / "root", {"alpha": doc_text("alpha")})
    run(s, embedder=embedder)
    bad = tmp_path / "bad.md"
    bad.write_bytes(b"")
    first = run(s, [bad], embedder=embedder)
    assert [n for n, _ in first.failed] == [str(bad)]
    assert str(bad) not in load_state(s).user_paths

    later = run(s, embedder=embedder)
    assert not later.failed and later.skipped == ["alpha"] and not later.changed

    # an installation that remembered a failed path before this fix can forget it with `documents delete`
    state = load_state(s)
    state.user_paths.append(str(bad))
    from ingest.state import save_state

    save_state(s, state)
    assert len(run(s, embedder=embedder).failed) == 1
    assert delete_document(s, str(bad)) == [user_doc_id(bad)]
    assert not run(s, embedder=embedder).failed
    state.user_paths = [str(bad)]
    save_state(s, state)
    assert delete_document(s, user_doc_id(bad)) == [user_doc_id(bad)] and load_state(s).user_paths == []


def test_a_failed_path_inside_a_new_and_a_remembered_ingest_keeps_the_good_ones(tmp_path, embedder):
    s = make_root(tmp_path / "root", {})
    good, bad = tmp_path / "good.md", tmp_path / "bad.md"
    good.write_text("# Good\n\nA fine note about LoRA ranks.\n", encoding="utf-8")
    bad.write_bytes(b"")
    summary = run(s, [good, bad], embedder=embedder)
    assert summary.added == [user_doc_id(good)] and len(summary.failed) == 1
    assert load_state(s).user_paths == [str(good)]
    good.write_bytes(b"")  # a remembered file that breaks later stays remembered: its earlier version is kept
    assert len(run(s, [good], embedder=embedder).failed) == 1
    assert load_state(s).user_paths == [str(good)] and user_doc_id(good) in list_documents(s)


# ---------------------------------------------------------------- the BM25 index under load


def keyword_docs(n: int, word: str) -> tuple[list[str], list[str]]:
    return [f"{word}:{i:04d}" for i in range(n)], [f"{word} passage {i} about adapter rank {i % 7}" for i in range(n)]


def test_bm25_is_read_from_disk_once_per_fingerprint(tmp_path, monkeypatch):
    import bm25s

    loads = []
    real_load = bm25s.BM25.load.__func__
    monkeypatch.setattr(bm25s.BM25, "load", classmethod(lambda cls, *a, **k: loads.append(a) or real_load(cls, *a, **k)))
    folder = tmp_path / "bm25"
    KeywordIndex(folder).build(*keyword_docs(20, "zebra"), "fp-one")
    served = KeywordIndex(folder)
    for _ in range(10):  # what the retriever does per query: load(), then search
        assert served.load().search("zebra adapter", 3)
    assert len(loads) == 1, "an unchanged index is not read again"

    KeywordIndex(folder).build(*keyword_docs(5, "okapi"), "fp-two")  # another process re-ingests
    for _ in range(5):
        hits = served.load().search("okapi adapter", 10)
    assert served.fingerprint == "fp-two" and {c for c, _ in hits} <= set(keyword_docs(5, "okapi")[0]) and hits
    assert len(loads) == 2


def test_bm25_searches_stay_consistent_while_another_process_rebuilds(tmp_path):
    folder = tmp_path / "bm25"
    sizes = {"zebra": 40, "okapi": 3}
    KeywordIndex(folder).build(*keyword_docs(sizes["zebra"], "zebra"), "zebra")
    served = KeywordIndex(folder).load()
    errors, stop = [], threading.Event()

    def searcher():
        while not stop.is_set():
            try:
                for cid, _ in served.load().search("zebra okapi passage adapter", 50):
                    word, i = cid.split(":")
                    assert int(i) < sizes[word], cid
            except Exception as e:  # noqa: BLE001 - any error here is the failure under test
                errors.append(repr(e))

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for k in range(20):
            word = ("okapi", "zebra")[k % 2]
            KeywordIndex(folder).build(*keyword_docs(sizes[word], word), f"{word}-{k}")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors[:3]


@pytest.mark.parametrize("damage", ["{not json", "{}", '{"ids": 7, "fingerprint": null}', ""])
def test_a_damaged_bm25_meta_is_rebuilt_by_the_next_ingest(tmp_path, embedder, damage):
    s = make_root(tmp_path / "root", {d: doc_text(d) for d in ("alpha", "beta")})
    run(s, embedder=embedder)
    (s.data_dir / "bm25" / "meta.json").write_text(damage, encoding="utf-8")
    again = run(s, embedder=embedder)
    assert again.keyword_rebuilt and not again.failed
    assert set(assert_consistent(s)) == {"alpha", "beta"}


# ---------------------------------------------------------------- crash safety and the CLI


@pytest.mark.slow
@pytest.mark.timeout(300)  # a child process plus a re-ingest of the whole corpus on two cores
def test_killed_ingest_resumes_without_duplicates(tmp_path, corpus_index, embedder):
    data = tmp_path / "data"
    env = {**os.environ, "FTATLAS_INGEST__DATA_DIR": str(data), "FTATLAS_INGEST__BATCH_SIZE": "8"}
    err = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(
        CLI + ["ingest", "--log-batches", "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("committed batch"):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    assert proc.returncode == -signal.SIGKILL, (lines, (tmp_path / "stderr.txt").read_text()[-2000:])

    s = make_settings(data)
    full = stored(corpus_index)
    partial = stored(s)
    assert 0 < len(partial) < len(full)
    assert set(partial) <= set(full)  # same settings, same content: the same chunk ids
    assert not load_state(s).complete

    summary = run(s, embedder=embedder)
    assert not summary.failed
    assert summary.chunks_written == len(full) - len(partial)  # committed batches are not redone
    docs = assert_consistent(s)
    assert set(stored(s)) == set(full)
    assert {k: len(v) for k, v in docs.items()} == {k: len(v) for k, v in by_doc(full).items()}
    state = load_state(s)
    assert state.complete and state.documents == load_state(corpus_index).documents


@contextlib.contextmanager
def hold_index_lock(settings):
    """Hold <data_dir>/index.lock the way another ingest process holds it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "index.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ingests_at_once_wait_for_each_other_and_index_like_one(tmp_path, embedder):
    """Two CLI ingests start while this test holds the index lock: both wait, saying so, then run one at a time."""
    root = tmp_path / "root"
    clean = make_root(root, {d: doc_text(d) for d in ("alpha", "beta", "gamma")}, data_dir=str(tmp_path / "clean"))
    run(clean, embedder=embedder)
    shared = load_settings("test", root=root)  # what the CLI in `root` uses: data/test under it
    env = {**os.environ, "PYTHONPATH": str(REPO), "FTATLAS_INGEST__CHUNK_TOKENS": "64", "FTATLAS_INGEST__CHUNK_OVERLAP": "8"}
    procs = []
    with hold_index_lock(shared):
        for _ in range(2):
            procs.append(subprocess.Popen(CLI + ["ingest", "--quiet"], cwd=root, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for p in procs:  # each says it waits before it touches anything
            lines: list[str] = []
            while not lines or "waiting up to" not in lines[-1]:
                lines.append(p.stderr.readline())
                assert lines[-1], ("the ingest ended without waiting", lines)
            assert str(shared.data_dir) in lines[-1], lines
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o[0].count("3 added") for o in outs) == [0, 1]  # one ingested, the other found it done
    assert stored(shared).keys() == stored(clean).keys()
    assert set(assert_consistent(shared)) == {"alpha", "beta", "gamma"}
    assert load_state(shared).documents == load_state(clean).documents


@pytest.mark.timeout(120)
def test_a_writer_that_waits_too_long_gives_up_clearly(tmp_path, embedder):
    s = make_root(tmp_path / "root", {"alpha": doc_text("alpha")}, lock_timeout_s=0.5)
    with hold_index_lock(s):
        done = []
        t = threading.Thread(target=lambda: done.append(pytest.raises(IngestError, run, s, None, embedder)))
        t.start()
        t.join(30)
    assert done and "gave up after 0.5 s" in str(done[0].value) and "lock_timeout_s" in str(done[0].value)
    with hold_index_lock(s):
        t = threading.Thread(target=lambda: done.append(pytest.raises(IngestError, delete_document, s, "alpha")))
        t.start()
        t.join(30)
    assert len(done) == 2
    assert run(s, embedder=embedder).added == ["alpha"]  # the lock is free again once its holder is done


@pytest.mark.timeout(120)
def test_noop_cli_ingest_writes_nothing(corpus_index):
    state_file = corpus_index.data_dir / "ingest_state.json"
    state_before = state_file.read_bytes()
    bm25_before = (corpus_index.data_dir / "bm25" / "meta.json").read_bytes()
    n_docs = len(read_manifest(corpus_index))
    n_chunks = len(stored(corpus_index))

    result = cli(["ingest", "--quiet"], corpus_index.data_dir)
    assert result.returncode == 0, result.stderr
    assert f"0 added, 0 updated, {n_docs} skipped (unchanged), 0 removed, 0 failed" in result.stdout
    assert f"{n_chunks} in the index, 0 written this run" in result.stdout
    assert state_file.read_bytes() == state_before
    assert (corpus_index.data_dir / "bm25" / "meta.json").read_bytes() == bm25_before


@pytest.mark.timeout(120)
def test_cli_documents_list_prints_one_line_per_document(corpus_index):
    manifest = {d["id"]: d for d in read_manifest(corpus_index)}
    result = cli(["documents", "list"], corpus_index.data_dir)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert sorted(r[0] for r in rows) == sorted(manifest)
    for key, kind, chunks, title in rows:
        assert kind == manifest[key]["kind"] and title == manifest[key]["title"] and int(chunks) > 0


@pytest.mark.timeout(120)
def test_cli_ingest_of_a_missing_file_fails_naming_it(tmp_path):
    result = cli(["ingest", "--quiet", "/nonexistent/file.md"], tmp_path / "data")
    assert result.returncode != 0
    assert "/nonexistent/file.md" in result.stdout + result.stderr
    assert "no such file" in result.stdout + result.stderr


# ---------------------------------------------------------------- Chroma server mode


@pytest.fixture
def chroma_server(tmp_path):
    port = free_port()
    log = open(tmp_path / "chroma.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "chroma"), "run", "--path", str(tmp_path / "server"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"chroma exited: {(tmp_path / 'chroma.log').read_text()[-2000:]}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    pytest.fail("chroma server did not answer its heartbeat within 60 s")
                time.sleep(0.2)
        yield port
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.mark.timeout(120)
def test_chroma_server_mode_ingests_and_repairs_outside_changes(tmp_path, chroma_server, embedder):
    import chromadb

    s = make_root(tmp_path / "root", {d: doc_text(d) for d in ("alpha", "beta", "gamma")},
                  chroma_host="127.0.0.1", chroma_port=chroma_server)
    first = run(s, embedder=embedder)
    assert sorted(first.added) == ["alpha", "beta", "gamma"]
    assert not (s.data_dir / "chroma").exists()  # nothing went to a local store

    other = chromadb.HttpClient(host="127.0.0.1", port=chroma_server)
    col = other.get_collection("ftatlas")
    got = col.get(include=["metadatas"])
    original = sorted(got["ids"])
    assert col.count() == first.chunks == len(original) > 0
    assert {m["doc_key"] for m in got["metadatas"]} == {"alpha", "beta", "gamma"}
    kw = KeywordIndex(s.data_dir / "bm25").load()
    assert kw.ids == original
    fingerprint = kw.fingerprint

    # another client deletes some chunks: the local state still says "complete", yet the next run must repair
    alpha = sorted(i for i in original if i.startswith("alpha:"))
    victims = alpha[:2]
    col.delete(ids=victims)
    assert Store(col).fingerprint() != fingerprint
    second = run(s, embedder=embedder)
    assert second.updated == ["alpha"] and second.chunks_written == len(victims)
    assert sorted(col.get(include=[])["ids"]) == original
    assert_consistent(s)
    assert KeywordIndex(s.data_dir / "bm25").load().fingerprint == Store(col).fingerprint() == fingerprint

    # another client removes a whole document that has also left the manifest: nothing to write, BM25 follows the server
    col.delete(ids=[i for i in original if i.startswith("gamma:")])
    write_manifest(s.root, [entry("alpha"), entry("beta")])
    third = run(s, embedder=embedder)
    assert third.chunks_written == 0 and third.keyword_rebuilt
    kw = KeywordIndex(s.data_dir / "bm25").load()
    assert kw.fingerprint != fingerprint
    assert kw.ids == sorted(col.get(include=[])["ids"]) == [i for i in original if not i.startswith("gamma:")]


# ---------------------------------------------------------------- corpus fetch


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def pdf_server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_downloads_the_pdf_and_ingest_adds_it(tmp_path, pdf_server, embedder):
    www, base = pdf_server
    make_pdf(www / "alpha.pdf", "Alpha full paper", ["Kangaroo low-rank adaptation trains two small matrices."])
    s = make_root(tmp_path / "root", {"alpha": doc_text("alpha"), "beta": doc_text("beta")},
                  extra={"alpha": {"pdf_url": f"{base}/alpha.pdf"}, "beta": {"pdf_url": f"{base}/missing.pdf"}})

    report = fetch_papers(s)
    assert report.downloaded == ["alpha"]
    assert [doc for doc, _ in report.failed] == ["beta"] and "404" in report.failed[0][1]
    assert (s.data_dir / "papers" / "alpha.pdf").read_bytes() == (www / "alpha.pdf").read_bytes()
    assert sorted(p.name for p in (s.data_dir / "papers").iterdir()) == ["alpha.pdf"]

    summary = run(s, embedder=embedder)
    assert sorted(summary.added) == ["alpha", "alpha/pdf", "beta"]
    pdf = by_doc(stored(s))["alpha/pdf"]
    assert {c["doc_id"] for c in pdf} == {"alpha"} and {c["kind"] for c in pdf} == {"paper-pdf"}
    assert {c["source"] for c in pdf} == {f"{base}/alpha.pdf"}
    assert any("Kangaroo low-rank adaptation" in c["text"] for c in pdf)
    assert_consistent(s)

    assert fetch_papers(s).cached == ["alpha"]


def test_fetch_from_an_unreachable_host_fails_fast_and_writes_nothing(tmp_path):
    port = free_port()  # nothing listens there once the probe socket is closed
    s = make_root(tmp_path / "root", {"alpha": doc_text("alpha")},
                  extra={"alpha": {"pdf_url": f"http://127.0.0.1:{port}/x.pdf"}}, fetch_timeout_s=3)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="127.0.0.1"):
        fetch_papers(s)
    assert time.monotonic() - t0 < 3
    assert not (s.data_dir / "papers").exists()


# ---------------------------------------------------------------- the glossary mined from the atlas


def test_the_atlas_states_its_own_russian_english_pairs():
    pairs = mine_pairs((REPO / "corpus" / "atlas.md").read_text(encoding="utf-8"))
    assert ("Инференс и деплой", "Inference") in pairs
    assert ("Верхние слои", "Partial / Head-only") in pairs
    assert ("смещения", "bias") in pairs
    assert not any("Mermaid" in en for _, en in pairs)  # a heading's brackets name things, they do not translate


def test_hand_glossary_entries_win_over_mined_ones():
    g = Glossary({"смещение": "bias"}, [("смещения", "offset"), ("Расширение знаний", "Retrieval")])
    assert g.expand("Что такое смещение?") == "bias"
    assert g.expand("Что входит в расширение знаний?") == "Retrieval"


def test_ingest_writes_the_mined_pairs_and_indexes_atlas_labels_in_both_languages(corpus_index):
    g = Glossary.load(corpus_index)
    assert ("Поведенческое обучение", "Behavior") in g.mined
    # 'квантование' is nowhere in the atlas: its English label 'quantization' is found by the Russian word
    hits = KeywordIndex(corpus_index.data_dir / "bm25").load().search("квантование", 10)
    assert any(cid.startswith("atlas:") for cid, _ in hits)


def test_index_status_calls_a_fresh_corpus_index_fresh(corpus_index):
    """The atlas's fingerprint includes the hand glossary (its chunks carry the translations); index_status must
    compute it the same way as ingest, or a fresh index reads as stale forever and every start re-checks it."""
    from ingest.status import index_status

    status = index_status(corpus_index)
    assert not status["stale"], status
    assert status["documents"] > 0
