"""The index's state without loading Chroma or a model: documents, chunks, and whether an ingest would change it."""

from __future__ import annotations

from pathlib import Path

from .errors import DocumentError
from .keyword import KeywordIndex
from .sources import document_fingerprint, manifest_sources, settings_key, user_sources
from .state import load_state


def index_status(settings) -> dict:
    """{'documents', 'chunks', 'stale', 'why'}: stale is True when the next plain ingest would do work."""
    state = load_state(settings)
    skey = settings_key(settings)
    sources = manifest_sources(settings) + user_sources([Path(p) for p in state.user_paths], set(state.forgotten))
    fps, unreadable = {}, []
    for s in sources:
        try:
            fps[s.key] = document_fingerprint(settings, s, skey)
        except (DocumentError, OSError):
            unreadable.append(str(s.path))
    try:
        kw_fingerprint = KeywordIndex(settings.data_dir / "bm25").load().fingerprint
    except (OSError, ValueError, KeyError, TypeError):
        kw_fingerprint = None  # a damaged keyword index: the next ingest rebuilds it
    why = (
        "no complete ingest yet" if not state.complete
        else "settings changed" if state.settings_key != skey
        else "documents added or removed" if set(fps) != set(state.documents)
        else "documents changed" if any(state.documents[k]["fingerprint"] != fp for k, fp in fps.items())
        else "keyword index out of step" if kw_fingerprint != state.collection_fingerprint
        else f"{len(unreadable)} unreadable" if unreadable
        else ""
    )
    chunks = sum(d.get("chunks", 0) for d in state.documents.values())
    return {"documents": len(state.documents), "chunks": chunks, "stale": bool(why), "why": why}
