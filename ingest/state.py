"""The ingest state file: remembered user paths and, after a complete run, each document's fingerprint."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class State:
    complete: bool = False  # False from the first write of a run until it finished: the fast path is off
    settings_key: str = ""
    documents: dict[str, dict] = field(default_factory=dict)  # key -> {fingerprint, doc_id, kind, title, chunks, path}
    user_paths: list[str] = field(default_factory=list)  # remembered files and folders
    forgotten: list[str] = field(default_factory=list)  # files deleted by the user inside remembered folders
    collection_fingerprint: str = ""


def state_path(settings) -> Path:
    return settings.data_dir / "ingest_state.json"


def load_state(settings) -> State:
    path = state_path(settings)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return State(**{k: v for k, v in raw.items() if k in State.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return State()


def save_state(settings, state: State) -> None:
    """Atomic: write a temp file, fsync, rename over the old one."""
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(state), f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
