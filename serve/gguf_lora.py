"""peft LoRA adapter -> GGUF LoRA adapter for llama.cpp (LLaMA and Gemma 3 bases), as convert_lora_to_gguf.py writes it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .adapter import CONFIG, GGUF, WEIGHTS, validate_adapter
from .errors import AdapterError

PREFIX = "base_model.model."
ARCHES = {"llama": "LLAMA", "gemma3": "GEMMA3"}  # GGUF architecture -> gguf.MODEL_ARCH member
# convert_hf_to_gguf reorders q/k rows for LLaMA's interleaved rope; Gemma's rope (NEOX) keeps the HF row order.
ROPE_PERMUTED = {"llama"}


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """convert_hf_to_gguf's LLaMA q/k row order (rotate-half -> interleaved rope pairs), applied to rows.

    Example: rows [0, 1, 2, 3] of one head with head_dim 4 -> [0, 2, 1, 3].
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert(adapter_dir: Path | str, base_gguf: Path | str, out: Path | str | None = None) -> Path:
    """Write the adapter as a GGUF LoRA for `base_gguf` (default: <adapter_dir>/lora.gguf) and return its path."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, base_gguf = Path(adapter_dir), Path(base_gguf)
    out = Path(out) if out else adapter_dir / GGUF
    validate_adapter(adapter_dir, base_gguf)
    cfg = json.loads((adapter_dir / CONFIG).read_text(encoding="utf-8"))
    for key, why in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save"), ("fan_in_fan_out", "fan_in_fan_out")):
        if cfg.get(key):
            raise AdapterError(f"{adapter_dir}: {why} cannot be expressed as a llama.cpp LoRA")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"{adapter_dir}: trained biases (bias={cfg['bias']!r}) cannot be expressed as a llama.cpp LoRA")

    reader = gguf.GGUFReader(base_gguf)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    arch = fields["general.architecture"]
    if arch not in ARCHES:
        raise AdapterError(f"{base_gguf}: GGUF LoRA conversion supports {' and '.join(ARCHES)} bases, not {arch!r}")
    n_head, n_kv = fields[f"{arch}.attention.head_count"], fields.get(f"{arch}.attention.head_count_kv")
    base_ne = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, ARCHES[arch]), fields[f"{arch}.block_count"])

    weights = load_file(str(adapter_dir / WEIGHTS))
    alpha = float(cfg["lora_alpha"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # renamed over `out` once whole: never a truncated lora.gguf
    try:
        _write(gguf.GGUFWriter(str(tmp), arch), arch, weights, cfg, alpha, names, base_ne, n_head, n_kv, adapter_dir,
               base_gguf)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _write(writer, arch: str, weights, cfg, alpha, names, base_ne, n_head, n_kv, adapter_dir: Path, base_gguf: Path) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for module in sorted({k.rsplit(".lora_", 1)[0] for k in weights}):
        # A multimodal Gemma 3 wrapper nests the text model as language_model; the GGUF holds the text model only.
        hf = module.removeprefix(PREFIX).replace("language_model.", "") + ".weight"
        name = names.get_name(hf, try_suffixes=(".weight",))
        if name is None or name not in base_ne:
            raise AdapterError(f"{adapter_dir}: {module} has no counterpart in {base_gguf.name}")
        a = weights[f"{module}.lora_A.weight"].astype(np.float32)
        b = weights[f"{module}.lora_B.weight"].astype(np.float32)
        b = b * (_peft_scale(cfg, module, a.shape[0]) / (alpha / a.shape[0]))  # 1.0 unless rslora or per-module patterns
        leaf = module.rsplit(".", 1)[-1]
        if arch in ROPE_PERMUTED and leaf == "q_proj":
            b = permute(b, n_head, n_head)
        elif arch in ROPE_PERMUTED and leaf == "k_proj":
            b = permute(b, n_head, n_kv)
        # GGUF stores numpy shapes reversed: lora_a [r, in] -> ne [in, r], lora_b [out, r] -> ne [r, out].
        ne_in, ne_out = base_ne[name][0], base_ne[name][1]
        if a.shape[1] != ne_in or b.shape[0] != ne_out:
            raise AdapterError(f"{adapter_dir}: {module} does not fit {name} {base_ne[name]} of {base_gguf.name}")
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _peft_scale(cfg: dict, module: str, rank: int) -> float:
    """The scale peft applies to B·A for one module: alpha/r, or alpha/sqrt(r) with rslora, honouring alpha_pattern."""
    alpha = float(cfg["lora_alpha"])
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if module.endswith(pattern) or f".{pattern}." in f".{module}.":
            alpha = float(value)
    return alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)


def gguf_adapter(adapter_dir: Path | str, base_gguf: Path | str) -> Path:
    """The adapter's lora.gguf for llama.cpp, converted now if it is missing or older than the peft weights."""
    adapter_dir = Path(adapter_dir)
    validate_adapter(adapter_dir, base_gguf)
    out = adapter_dir / GGUF
    if out.is_file() and out.stat().st_mtime >= (adapter_dir / WEIGHTS).stat().st_mtime and _whole(out):
        return out
    return convert(adapter_dir, base_gguf, out)


def _whole(path: Path) -> bool:
    """False for a lora.gguf cut short (by a crash of an older, non-atomic writer or a full disk)."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        return bool(reader.tensors) and all(t.data.nbytes == t.n_bytes for t in reader.tensors)
    except Exception:  # the reader raises ValueError, IndexError... on a cut file
        return False
