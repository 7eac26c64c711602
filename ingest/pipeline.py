"""Incremental, crash-safe ingestion: sources -> chunks -> embeddings -> Chroma, then the BM25 index in step."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .chunking import Chunk, chunk_markdown
from .errors import DocumentError, IngestError
from .glossary import Glossary, mine_pairs, save_mined
from .keyword import KeywordIndex
from .loaders import load_file, read_bytes
from .lock import index_lock
from .sources import Source, document_fingerprint, manifest_sources, settings_key, user_doc_id, user_sources
from .state import State, load_state, save_state

_TERMS = re.compile(r"^Термины:\s*(.+)$", re.M)


@dataclass
class Summary:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    chunks: int = 0  # chunks in the collection afterwards
    chunks_written: int = 0
    seconds: float = 0.0
    keyword_rebuilt: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def text(self) -> str:
        lines = [
            f"documents: {len(self.added)} added, {len(self.updated)} updated, {len(self.skipped)} skipped (unchanged), "
            f"{len(self.removed)} removed, {len(self.failed)} failed",
            f"chunks: {self.chunks} in the index, {self.chunks_written} written this run; {self.seconds:.1f} s",
        ]
        lines += [f"  failed: {name}: {reason}" for name, reason in self.failed]
        lines += [f"  removed: {key}" for key in self.removed]
        return "\n".join(lines)


def detect_language(text: str) -> str:
    """'ru' when Cyrillic letters outnumber Latin ones. Example: 'Полная карта LoRA' -> 'ru'."""
    cyr = len(re.findall(r"[а-яёА-ЯЁ]", text))
    lat = len(re.findall(r"[A-Za-z]", text))
    return "ru" if cyr > lat else "en"


def keyword_text(text: str, meta: dict, glossary: Glossary | None = None) -> str:
    """What BM25 indexes: the passage plus its title, section and the document's Russian terms; an atlas passage
    also carries its terms in the other language, so a question in either language finds its labels."""
    both = glossary.both(f"{meta.get('section', '')}\n{text}") if glossary and meta.get("kind") == "atlas" else ""
    return "\n".join([meta.get("title", ""), meta.get("section", ""), meta.get("terms", ""), text, both])


def embed_prefix(title: str, section: str) -> str:
    """Example: ('LoRA', 'LoRA > How it works') -> 'LoRA — How it works'."""
    tail = section.split(" > ")[-1] if section else ""
    return f"{title} — {tail}" if tail and tail != title else title


class _Writer:
    """Embeds and commits chunks in batches of `batch_size`; drops a document's stale chunks once its new ones are in."""

    def __init__(self, store, embedder, batch_size: int, on_batch: Callable[[int, int], None] | None, bar):
        self.store, self.embedder, self.batch_size = store, embedder, batch_size
        self.on_batch, self.bar = on_batch, bar
        self.pending: list[tuple[str, str, list[str], dict]] = []
        self.left: dict[str, int] = {}
        self.stale: dict[str, list[str]] = {}
        self.batches = 0
        self.written = 0

    def add(self, key: str, items: list[tuple[str, str, list[str], dict]], stale: list[str]) -> None:
        self.left[key] = len(items)
        self.stale[key] = stale
        if not items:
            self._finish(key)
        for item in items:
            self.pending.append(item)
            if len(self.pending) >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        from .store import StoredChunk

        if not self.pending:
            return
        batch, self.pending = self.pending, []
        vectors = self.embedder.encode_grouped([texts for _, _, texts, _ in batch])
        self.store.add([StoredChunk(cid, text, vec, meta) for (cid, text, _, meta), vec in zip(batch, vectors)])
        self.batches += 1
        self.written += len(batch)
        if self.bar is not None:
            self.bar.update(len(batch))
        if self.on_batch:
            self.on_batch(self.batches, len(batch))
        for _, _, _, meta in batch:
            key = meta["doc_key"]
            self.left[key] -= 1
            if self.left[key] == 0:
                self._finish(key)

    def _finish(self, key: str) -> None:
        if self.stale.get(key):
            self.store.delete_ids(self.stale.pop(key))


def _chunk_items(src: Source, fp: str, settings, embedder, glossary: Glossary) -> list[tuple[str, str, list[str], dict]]:
    loaded = load_file(src.path)
    chunks: list[Chunk] = chunk_markdown(
        loaded.text, embedder.count_tokens, settings.ingest.chunk_tokens, settings.ingest.chunk_overlap,
        embed_tokens=embedder.max_tokens - 40,  # room for the title/section prefix
    )
    if not chunks:
        raise DocumentError(str(src.path), "no text to index")
    title = src.title or loaded.title
    language = src.language or detect_language(loaded.text)
    terms = _TERMS.search(loaded.text)
    items = []
    for i, c in enumerate(chunks):
        meta = {
            "doc_id": src.doc_id, "doc_key": src.key, "title": title, "section": c.section, "source": src.source,
            "language": language, "kind": src.kind, "unit": c.unit, "chunk_index": i, "n_chunks": len(chunks),
            "fingerprint": fp, "path": str(src.path), "terms": terms.group(1).strip() if terms else "",
        }
        prefix = embed_prefix(title, c.section)
        texts = [f"{prefix}\n{t}" for t in (c.embed_texts or [c.text])]
        if src.kind == "atlas":  # the embedder reads English: the atlas's Russian reaches it through the glossary
            texts = [f"{t}\n{glossary.english(t)}".rstrip() for t in texts]
        items.append((f"{src.key}:{fp}:{i:04d}", c.text, texts, meta))
    return items


def _fast_path(state: State, skey: str, fps: dict[str, str], failed: list, kw: KeywordIndex, settings) -> bool:
    """True when nothing changed since the last complete run: decided without loading Chroma or any model."""
    return (
        state.complete
        and not failed
        and not settings.ingest.chroma_host
        and state.settings_key == skey
        and set(fps) == set(state.documents)
        and all(state.documents[k]["fingerprint"] == fp for k, fp in fps.items())
        and kw.fingerprint == state.collection_fingerprint
    )


def ingest(
    settings,
    paths: list[Path] | None = None,
    embedder=None,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> Summary:
    """Bring the index in line with the manifest (no paths) or add/refresh the given user paths.

    Holds the index lock (ingest/lock.py) throughout: a second process waits for it."""
    with index_lock(settings):
        return _ingest(settings, paths, embedder, progress, on_batch)


def _ingest(settings, paths, embedder, progress, on_batch) -> Summary:
    t0 = time.perf_counter()
    summary = Summary()
    state = load_state(settings)
    skey = settings_key(settings)
    kw = KeywordIndex(settings.data_dir / "bm25").load()

    remembered = set(state.user_paths)
    if paths:
        resolved = [str(Path(p).resolve()) for p in paths]
        state.forgotten = [f for f in state.forgotten if not any(f == r or f.startswith(r + "/") for r in resolved)]
        # a manifest document given by its path (e.g. after `documents delete`) comes back as itself, not a copy
        restored = [s for s in _manifest_or_empty(settings) if str(s.path) in resolved]
        mine = [r for r in resolved if r not in {str(s.path) for s in restored}]
        state.user_paths = list(dict.fromkeys(state.user_paths + mine))
        sources = restored + user_sources([Path(p) for p in mine])
    else:
        forgotten = set(state.forgotten)
        sources = ([s for s in manifest_sources(settings) if str(s.path) not in forgotten]
                   + user_sources([Path(p) for p in state.user_paths], forgotten))

    fps: dict[str, str] = {}
    gone: set[str] = set()
    ok_sources = []
    for s in sources:
        if s.kind == "user" and not s.path.exists() and not paths:
            gone.add(s.key)  # a remembered file that disappeared is dropped; a path given now that is missing fails
            continue
        try:
            read_bytes(s.path)  # names a directory called x.md or an unreadable file
            fps[s.key] = document_fingerprint(settings, s, skey)
            ok_sources.append(s)
        except DocumentError as e:
            summary.failed.append((e.name, e.reason))
        except OSError as e:
            summary.failed.append((str(s.path), f"cannot be read: {e.strerror or e}"))
    if paths:
        state.user_paths = [p for p in state.user_paths if Path(p).exists()]
    # The decision chart is re-read on every manifest run (it is cheap); a malformed one is named, ingest goes on.
    chart_failed = [] if paths else decision_charts(settings, [s for s in ok_sources if s.kind != "user"])

    if not paths and _fast_path(state, skey, fps, summary.failed, kw, settings):
        summary.failed += chart_failed
        summary.skipped = sorted(fps)
        summary.chunks = sum(d["chunks"] for d in state.documents.values())
        summary.seconds = time.perf_counter() - t0
        return summary

    from .embedder import Embedder
    from .store import Store, open_collection

    atlases = [s for s in ok_sources if s.kind == "atlas"]
    if atlases:
        save_mined(settings, [p for s in atlases for p in mine_pairs(load_file(s.path).text)])
    glossary = Glossary.load(settings)
    store = Store(open_collection(settings))
    embedder = embedder or Embedder(settings.ingest.embed_model, settings.ingest.device, settings.ingest.embed_batch_size)
    state.complete = False
    save_state(settings, state)

    by_key: dict[str, dict[str, dict]] = {}
    for cid, meta in store.metadatas().items():
        by_key.setdefault(meta.get("doc_key", meta.get("doc_id", "?")), {})[cid] = meta

    plan = []
    for s in ok_sources:
        have = by_key.get(s.key, {})
        fp = fps[s.key]
        current = {cid for cid, m in have.items() if m.get("fingerprint") == fp}
        n = next((m["n_chunks"] for cid, m in have.items() if cid in current), None)
        if current and len(current) == n and set(have) == current:
            summary.skipped.append(s.key)
        else:
            plan.append((s, fp, have, current))

    bar = None
    if progress and plan:
        from tqdm import tqdm

        bar = tqdm(desc="ingest", unit="chunk", total=None, leave=False)
    writer = _Writer(store, embedder, settings.ingest.batch_size, on_batch, bar)
    for s, fp, have, current in plan:
        try:
            items = _chunk_items(s, fp, settings, embedder, glossary)
        except DocumentError as e:
            summary.failed.append((e.name, e.reason))  # its previous chunks, if any, stay: nothing is lost
            continue
        if bar is not None:
            bar.total = (bar.total or 0) + sum(1 for it in items if it[0] not in current)
        writer.add(s.key, [it for it in items if it[0] not in current], [cid for cid in have if cid not in {it[0] for it in items}])
        (summary.updated if have else summary.added).append(s.key)
    writer.flush()
    if bar is not None:
        bar.close()
    summary.chunks_written = writer.written

    wanted = {s.key for s in sources} - gone
    for key, chunks in by_key.items():
        ours = key in state.documents or any(m.get("kind") != "user" for m in chunks.values())
        if key not in wanted and (gone and key in gone or not paths) and ours:
            store.delete_ids(list(chunks))
            summary.removed.append(key)
    if gone:
        state.user_paths = [p for p in state.user_paths if Path(p).exists()]
    if paths:  # a new path is remembered only once it ingested: a bad file is not retried by every later run
        bad = {name for name, _ in summary.failed}
        state.user_paths = [p for p in state.user_paths if p in remembered or p not in bad]

    summary.keyword_rebuilt = sync_keyword_index(settings, store, kw, glossary)
    summary.failed += chart_failed
    # Ours: the manifest's documents and the user files this installation added; on a shared server other
    # installations' user documents are neither listed as ours nor ever pruned by us.
    known = set(state.documents) | {src.key for src in sources}
    state.documents = {k: d for k, d in documents_from_store(store).items() if k in known and k not in summary.removed}
    state.collection_fingerprint = kw.fingerprint or ""
    state.settings_key = skey
    state.complete = True
    save_state(settings, state)
    summary.chunks = sum(d["chunks"] for d in state.documents.values())
    summary.seconds = time.perf_counter() - t0
    return summary


def _manifest_or_empty(settings) -> list[Source]:
    try:
        return manifest_sources(settings)
    except IngestError:  # adding one's own files does not need a readable manifest
        return []


def decision_charts(settings, sources: list[Source]) -> list[tuple[str, str]]:
    """Save the corpus's decision chart for the advisor (see decision.py); returns the charts' failures."""
    from .decision import write_map
    from .sources import read_manifest

    families: dict[str, list[str]] = {}
    for d in read_manifest(settings):
        if d.get("family"):
            families.setdefault(str(d["family"]), []).append(str(d["id"]))
    docs = []
    for s in sources:
        if s.path.suffix.lower() in (".md", ".markdown"):
            try:
                docs.append((s.doc_id, s.path, load_file(s.path).text))
            except DocumentError:
                continue  # named by the chunking step
    return write_map(settings, docs, families)


def sync_keyword_index(settings, store, kw: KeywordIndex | None = None, glossary: Glossary | None = None) -> bool:
    """Rebuild the BM25 index when the collection changed since it was built; True when it was rebuilt."""
    kw = kw or KeywordIndex(settings.data_dir / "bm25").load()
    fp = store.fingerprint()
    if kw.fingerprint == fp:
        return False
    glossary = glossary or Glossary.load(settings)
    ids, texts, metas = store.all_texts()
    kw.build(ids, [keyword_text(t, m, glossary) for t, m in zip(texts, metas)], fp)
    return True


def documents_from_store(store) -> dict[str, dict]:
    """key -> {doc_id, kind, title, chunks, fingerprint, path} from the collection itself."""
    docs: dict[str, dict] = {}
    for meta in store.metadatas().values():
        key = meta.get("doc_key", meta.get("doc_id"))
        d = docs.setdefault(key, {
            "doc_id": meta.get("doc_id"), "kind": meta.get("kind"), "title": meta.get("title"),
            "chunks": 0, "fingerprint": meta.get("fingerprint"), "path": meta.get("path", ""),
        })
        d["chunks"] += 1
    return dict(sorted(docs.items()))


def delete_document(settings, doc_id: str) -> list[str]:
    """Remove a document (every file of it) from Chroma, BM25 and the state; returns the keys removed.

    The deletion lasts: its files are kept in state.forgotten, so the next plain ingest does not bring a manifest
    document back; ingesting its path again does. A remembered file that never ingested is forgotten by its id
    or path."""
    with index_lock(settings):
        return _delete(settings, doc_id)


def _delete(settings, doc_id: str) -> list[str]:
    from .store import Store, open_collection

    store = Store(open_collection(settings))
    state = load_state(settings)
    hits = {cid: m for cid, m in store.metadatas().items() if m.get("doc_id") == doc_id or m.get("doc_key") == doc_id}
    if not hits:
        failed = [p for p in state.user_paths if doc_id in (p, user_doc_id(Path(p))) or str(Path(doc_id).resolve()) == p]
        if not failed:
            raise IngestError(f"no document with id {doc_id!r} (see `ftatlas documents list`)")
        state.user_paths = [p for p in state.user_paths if p not in failed]
        save_state(settings, state)
        return [user_doc_id(Path(p)) for p in failed]
    state.complete = False
    save_state(settings, state)
    keys = sorted({m.get("doc_key", doc_id) for m in hits.values()})
    paths = {m.get("path") for m in hits.values()}
    store.delete_ids(list(hits))
    state.user_paths = [p for p in state.user_paths if p not in paths]
    state.forgotten = sorted(set(state.forgotten) | {p for p in paths if p})
    kw = KeywordIndex(settings.data_dir / "bm25").load()
    sync_keyword_index(settings, store, kw)
    state.documents = documents_from_store(store)
    state.collection_fingerprint = kw.fingerprint or ""
    state.complete = True
    save_state(settings, state)
    return keys
