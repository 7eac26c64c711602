"""The promoted adapter: `<data_dir>/adapters/current`, written only by `ftatlas adapters promote`; serving prefers it.

Each promoted adapter is copied into `<data_dir>/adapters/versions/<name>/`; `current` and `previous` are symlinks
to versions, each replaced by one rename, so a reader sees the old adapter or the new one and never half of either.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .bases import BASES, base_of_model
from .errors import AdapterError

CURRENT, PREVIOUS, VERSIONS, RECORD = "current", "previous", "versions", "promotion.json"


def adapters_dir(settings) -> Path:
    return settings.data_dir / "adapters"


def current(settings) -> Path | None:
    """The promoted adapter folder, or None when nothing was promoted (or its folder is gone)."""
    link = adapters_dir(settings) / CURRENT
    return link.resolve() if (link / "adapter_config.json").is_file() else None


def base_of_adapter(folder: Path) -> str:
    """The registered base an adapter was trained on, from its adapter_config.json. Example: google/gemma-3-270m -> gemma3."""
    try:
        name = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as e:
        raise AdapterError(f"{folder}: cannot read the base model from adapter_config.json ({e})") from e
    found = next((b.name for b in BASES.values() if b.hf_id == name), None) or base_of_model(str(name))
    if found is None:
        raise AdapterError(f"{folder}: trained on {name!r}, which is none of the bases ftatlas serves ({sorted(BASES)})")
    return found


def serving_settings(settings):
    """The settings the doors serve with: the promoted adapter (if any) in place of the configured one for its base."""
    folder = current(settings)
    if folder is None:
        return settings
    llm, base = settings.llm, base_of_adapter(folder)
    if llm.adapter is not None and base_of_model(llm.model) == base:
        llm = llm.model_copy(update={"adapter": folder})
    else:
        llm = llm.model_copy(update={"adapters": {**llm.adapters, base: folder}})
    return settings.model_copy(update={"llm": llm})


def promote(settings, adapter: Path, record: dict) -> Path:
    """Copy `adapter` into versions/, point `current` at it and `previous` at what was current; return the copy."""
    root = adapters_dir(settings)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(adapter).resolve().parent.name}"
    target, tmp = root / VERSIONS / name, root / VERSIONS / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(adapter, tmp)
    (tmp / RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.rename(target)  # the version appears whole or not at all
    before = current(settings)
    if before is not None:
        _point(root, PREVIOUS, before)
    _point(root, CURRENT, target)
    return target


def rollback(settings) -> Path:
    """Serve the previous adapter again (and keep the one it replaces as `previous`); return it."""
    root = adapters_dir(settings)
    prev, now = root / PREVIOUS, current(settings)
    if not (prev / "adapter_config.json").is_file():
        raise AdapterError(f"nothing to roll back to: {prev} does not name a previous adapter")
    target = prev.resolve()
    _point(root, CURRENT, target)
    if now is not None:
        _point(root, PREVIOUS, now)
    return target


def _point(root: Path, link: str, target: Path) -> None:
    tmp = root / f".{link}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target, root), target_is_directory=True)
    os.replace(tmp, root / link)  # one rename: readers never see the link missing
