"""`ftatlas bench ingest`: pipeline throughput next to raw SentenceTransformer.encode, measured in one run; and the
near-duplicate index `bench serve --scale` times retrieval on."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .embedder import Embedder
from .errors import IngestError
from .loaders import load_file
from .pipeline import ingest
from .sources import manifest_sources


def _synthetic_corpus(settings, folder: Path, scale: int, seed: int = 7) -> int:
    """`scale` copies of every manifest document, sentences shuffled within paragraphs and each copy tagged, so texts differ."""
    rng = random.Random(seed)
    n = 0
    for src in manifest_sources(settings):
        text = load_file(src.path).text
        for k in range(scale):
            paras = []
            for para in text.split("\n\n"):
                if para.lstrip().startswith(("|", "```", "#")):
                    paras.append(para)
                    continue
                sents = para.split(". ")
                rng.shuffle(sents)
                paras.append(". ".join(sents))
            (folder / f"{src.key.replace('/', '_')}-copy{k:03d}.md").write_text(
                f"# Copy {k} of {src.title}\n\nSynthetic variant {k}-{rng.randrange(10**9)}.\n\n" + "\n\n".join(paras),
                encoding="utf-8",
            )
            n += 1
    return n


def near_duplicate_index(settings, target, scale: int, seed: int = 7) -> int:
    """`scale` copies of every chunk of settings' index in target's data folder: the originals, then copies with
    tagged texts, nudged vectors and their own doc_ids. No embedding: it is for timing retrieval, not its quality.
    Returns the chunks written.
    """
    import numpy as np

    from .glossary import MINED
    from .pipeline import sync_keyword_index
    from .store import Store, open_collection

    got = open_collection(settings).get(include=["documents", "metadatas", "embeddings"])
    if not got["ids"]:
        raise IngestError(f"the index in {settings.data_dir} is empty; run `ftatlas ingest` first")
    dst = Store(open_collection(target))
    vecs = np.asarray(got["embeddings"], dtype=np.float32)
    rng = np.random.default_rng(seed)
    for k in range(scale):
        noisy = vecs + (rng.normal(0, 0.02, vecs.shape).astype(np.float32) if k else 0)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        tag = f"~{k}" if k else ""
        metas = [{**m, "doc_id": m["doc_id"] + tag, "doc_key": m.get("doc_key", m["doc_id"]) + tag} for m in got["metadatas"]]
        texts = [f"{t}\n(copy {k})" if k else t for t in got["documents"]]
        ids = [cid + tag for cid in got["ids"]]
        for i in range(0, len(ids), 1000):
            dst.collection.add(ids=ids[i:i + 1000], embeddings=noisy[i:i + 1000].tolist(), documents=texts[i:i + 1000],
                               metadatas=metas[i:i + 1000])
    if (settings.data_dir / MINED).is_file():
        shutil.copy(settings.data_dir / MINED, target.data_dir / MINED)
    sync_keyword_index(target, dst)
    return dst.count()


def _measure(settings, embedder: Embedder, paths: list[Path] | None) -> dict:
    captured: list[list[str]] = []
    real_encode = embedder.encode_grouped

    def spy(groups):
        captured.extend(groups)
        return real_encode(groups)

    embedder.encode_grouped = spy
    t0 = time.perf_counter()
    summary = ingest(settings, paths, embedder=embedder, progress=False)
    pipeline_s = time.perf_counter() - t0
    embedder.encode_grouped = real_encode
    flat = [t for g in captured for t in g]
    t0 = time.perf_counter()
    embedder.model.encode(flat, batch_size=embedder.batch_size, normalize_embeddings=True, show_progress_bar=False)
    raw_s = time.perf_counter() - t0
    chunks = summary.chunks_written
    return {
        "chunks": chunks, "embedded_texts": len(flat), "pipeline_s": round(pipeline_s, 2), "raw_encode_s": round(raw_s, 2),
        "pipeline_chunks_per_s": round(chunks / pipeline_s, 1), "raw_encode_chunks_per_s": round(chunks / raw_s, 1),
        "ratio": round(raw_s / pipeline_s, 3), "failed": len(summary.failed),
    }


def run_bench(settings, scale: int = 1) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="ftatlas-bench-"))
    try:
        s = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"data_dir": tmp / "data", "chroma_host": None})})
        embedder = Embedder(s.ingest.embed_model, s.ingest.device, s.ingest.embed_batch_size)
        embedder.encode(["warm up the model and its threads"])
        rows = {"corpus": _measure(s, embedder, None)}
        env = {"FTATLAS_INGEST__DATA_DIR": str(tmp / "data")}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ftatlas.cli", "ingest", "--quiet"], check=True, capture_output=True,
                       env={**__import__("os").environ, **env}, cwd=settings.root)
        noop_s = time.perf_counter() - t0
        if scale > 1:
            folder = tmp / "synthetic"
            folder.mkdir()
            docs = _synthetic_corpus(s, folder, scale)
            rows[f"synthetic x{scale} ({docs} docs)"] = _measure(s, embedder, [folder])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [f"{'corpus':28} {'chunks':>7} {'pipeline chunks/s':>18} {'raw encode chunks/s':>20} {'ratio':>6}"]
    for name, r in rows.items():
        lines.append(f"{name:28} {r['chunks']:>7} {r['pipeline_chunks_per_s']:>18} {r['raw_encode_chunks_per_s']:>20} {r['ratio']:>6}")
    lines.append(f"no-op re-ingest (CLI, wall): {noop_s:.2f} s")
    lines.append(json.dumps({"rows": rows, "noop_reingest_s": round(noop_s, 2), "batch_size": settings.ingest.embed_batch_size}))
    return "\n".join(lines)
