"""What to ingest: the manifest's documents, cached paper PDFs, and users' remembered files and folders."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import IngestError
from .loaders import SUFFIXES

CHUNKER_VERSION = "6"  # bump when chunking changes, so every document is re-chunked


@dataclass
class Source:
    key: str  # one ingested file: 'lora', 'lora/pdf', 'user-notes-1a2b3c'
    doc_id: str  # the manifest id shared by a paper's card and its PDF; what sources and filters use
    path: Path
    kind: str  # atlas | paper-card | paper-pdf | user
    title: str | None = None
    language: str | None = None
    source: str = ""

    def fingerprint(self, settings_key: str) -> str:
        """Content + chunk settings + embedder; raises OSError when the file cannot be read."""
        h = hashlib.sha256(settings_key.encode())
        h.update(self.path.read_bytes())
        return h.hexdigest()[:12]


def settings_key(settings) -> str:
    """Example: chunk_tokens=200, overlap=32, bundled -> 'v3|200|32|bundled:all-MiniLM-L6-v2'."""
    from .embedder import embedder_id

    ing = settings.ingest
    return f"v{CHUNKER_VERSION}|{ing.chunk_tokens}|{ing.chunk_overlap}|{embedder_id(ing.embed_model)}"


def document_fingerprint(settings, src: Source, skey: str) -> str:
    """What an ingest compares, for ingest and index_status alike: atlas chunks carry the hand glossary's
    translations, so a changed glossary re-chunks the atlas. Raises OSError when the file cannot be read."""
    if src.kind != "atlas":
        return src.fingerprint(skey)
    from .glossary import Glossary

    return src.fingerprint(skey + f"|glossary:{Glossary.hand_key(settings)}")


def read_manifest(settings) -> list[dict]:
    path = settings.path(settings.ingest.manifest)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise IngestError(f"cannot read the manifest {path}: {e}") from e
    except yaml.YAMLError as e:
        raise IngestError(f"the manifest {path} is not valid YAML: {e}") from e
    docs = data.get("documents") if isinstance(data, dict) else None
    if not isinstance(docs, list):
        raise IngestError(f"the manifest {path} has no 'documents' list")
    for d in docs:
        missing = {"id", "title", "path", "language", "kind"} - set(d)
        if missing:
            raise IngestError(f"manifest entry {d.get('id', d)!r} lacks {sorted(missing)}")
    return docs


def pdf_cache(settings) -> Path:
    return settings.data_dir / "papers"


def manifest_sources(settings) -> list[Source]:
    out = []
    for d in read_manifest(settings):
        path = settings.path(d["path"])
        out.append(Source(d["id"], d["id"], path, d["kind"], d["title"], d["language"], str(d.get("source") or d["path"])))
        pdf = pdf_cache(settings) / f"{d['id']}.pdf"
        if d.get("pdf_url") and pdf.is_file():
            out.append(Source(f"{d['id']}/pdf", d["id"], pdf, "paper-pdf", d["title"] + " (PDF)", "en", d["pdf_url"]))
    return out


def shown_path(settings, path: str) -> str:
    """A document's path as clients see it: no server paths. Relative to the data folder, else to the project
    root, else just the file name. Example: <data_dir>/uploads/notes.md -> 'uploads/notes.md'."""
    if not path:
        return ""
    p = Path(path)
    for base in (settings.data_dir, settings.root.resolve()):
        if p.is_relative_to(base):
            return str(p.relative_to(base))
    return p.name


def user_doc_id(path: Path) -> str:
    """A stable id for a user's file. Example: /home/a/My Notes.md -> 'user-my-notes-<6 hex of the path>'."""
    slug = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-")[:40] or "doc"
    return f"user-{slug}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:6]}"


def expand_paths(paths: list[Path], forgotten: set[str] = frozenset()) -> list[Path]:
    """Files under the given files and folders; a folder contributes the entries with a supported suffix."""
    files: list[Path] = []
    for p in paths:
        p = Path(p).resolve()
        if p.is_dir() and p.suffix.lower() not in SUFFIXES:
            files.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in SUFFIXES and str(q) not in forgotten))
        else:
            files.append(p)  # a missing or odd path is named as failed by the pipeline
    return list(dict.fromkeys(files))


def user_sources(paths: list[Path], forgotten: set[str] = frozenset()) -> list[Source]:
    return [Source(user_doc_id(f), user_doc_id(f), f, "user", None, None, str(f)) for f in expand_paths(paths, forgotten)]
