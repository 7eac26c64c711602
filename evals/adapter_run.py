"""Ties an eval of an atlas-rag-lora model to the training run that made its adapter: a report note, and eval.json in the run."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .report import summaries

SHOWN_RUN = ("steps", "train_seconds", "s_per_step", "train_loss", "eval_loss", "data_hash", "base_model")


def training_run(adapter: Path) -> dict | None:
    """runs/<id>/run.json for an adapter saved as runs/<id>/adapter (None for an adapter from elsewhere)."""
    record = Path(adapter).resolve().parent / "run.json"
    try:
        return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def shown(path: Path, root: Path | None) -> str:
    """A path as a report shows it: relative to the repo when inside it. Example: (<root>/runs/x, <root>) -> 'runs/x'."""
    path = Path(path)
    if root is not None and path.is_relative_to(Path(root).resolve()):
        return str(path.relative_to(Path(root).resolve()))
    return str(path)


def adapter_note(adapter: Path, root: Path | None = None, model: str = "atlas-rag-lora") -> str:
    """Example: 'atlas-rag-lora: adapter runs/x/adapter (run x: 48 steps in 1174 s, ...)'; paths relative to `root`."""
    info = training_run(adapter)
    if info is None:
        return f"{model}: adapter {shown(adapter, root)}"
    size = sum(f.stat().st_size for f in Path(adapter).glob("adapter_model.*")) / 2**20
    facts = ", ".join(f"{k} {info[k]:.4g}" if isinstance(info.get(k), float) else f"{k} {info.get(k)}"
                      for k in SHOWN_RUN if info.get(k) is not None)
    return f"{model}: adapter {shown(adapter, root)} ({size:.1f} MiB; run {info.get('run_id')}: {facts})"


def record_in_run(adapter: Path, report_folder: Path, records: list[dict], root: Path | None = None) -> Path | None:
    """Write runs/<id>/eval.json: which report measured this adapter, and the summary rows of that report."""
    info = training_run(adapter)
    if info is None:
        return None
    out = Path(adapter).resolve().parent / "eval.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"report": shown(report_folder, root), **summaries(records)}, ensure_ascii=False, indent=1),
                   encoding="utf-8")
    os.replace(tmp, out)
    return out
