"""Checks a LoRA adapter folder before anything serves it: files, weights format, and fit to the base model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AdapterError

CONFIG, WEIGHTS, GGUF = "adapter_config.json", "adapter_model.safetensors", "lora.gguf"
PICKLED = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.ckpt")
TENSOR = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<ab>[AB])(?:\.weight)?$")
LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class BaseShape:
    """What an adapter must fit: the dimensions of a llama-style base model."""

    name: str | None
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    intermediate: int | None = None

    def dims(self, module: str) -> tuple[int, int] | None:
        """(in, out) features of a projection. Example: SmolLM2-135M, 'k_proj' -> (576, 192)."""
        if not (self.hidden and self.heads):
            return None
        hd = self.head_dim or self.hidden // self.heads
        q, kv = self.heads * hd, (self.kv_heads or self.heads) * hd
        table = {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                 "o_proj": (q, self.hidden)}
        if self.intermediate:
            table |= {"gate_proj": (self.hidden, self.intermediate), "up_proj": (self.hidden, self.intermediate),
                      "down_proj": (self.intermediate, self.hidden)}
        return table.get(module)


@dataclass
class AdapterInfo:
    path: Path
    base_model: str | None
    r: int
    alpha: float
    target_modules: list[str]
    modules: int  # adapted weight matrices
    layers: list[int] = field(default_factory=list)
    gguf: Path | None = None  # lora.gguf beside the weights, for llama.cpp


def model_name(name: str | None) -> str | None:
    """A base name comparable across hub ids, folders and GGUF files.

    Example: 'HuggingFaceTB/SmolLM2-135M-Instruct' and '/x/SmolLM2-135M-Instruct.Q4_1.gguf' -> 'smollm2-135m-instruct'.
    """
    if not name:
        return None
    stem = re.sub(r"\.gguf$", "", str(name).rstrip("/").split("/")[-1], flags=re.I).lower()
    return re.sub(r"[.-](?:i?q\d\w*|f16|f32|bf16)$", "", stem)


def base_shape(base: Any) -> BaseShape | None:
    """Dimensions of a base given as a PretrainedConfig, a config dict, an HF folder or id, or a GGUF file."""
    if base is None:
        return None
    if hasattr(base, "to_dict"):
        return _from_config(base.to_dict())
    if isinstance(base, dict):
        return _from_config(base)
    path = Path(str(base))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise AdapterError(f"base model {path} does not exist")
        return _from_gguf(path)
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        return _from_config({**cfg, "_name_or_path": str(path)})
    try:
        from transformers import AutoConfig

        return _from_config({**AutoConfig.from_pretrained(str(base)).to_dict(), "_name_or_path": str(base)})
    except Exception:  # a hub id not cached here: only the name can be compared
        return BaseShape(name=str(base))


def _from_config(cfg: dict) -> BaseShape:
    cfg = cfg.get("text_config") or cfg
    return BaseShape(cfg.get("_name_or_path"), cfg.get("num_hidden_layers"), cfg.get("hidden_size"),
                     cfg.get("num_attention_heads"), cfg.get("num_key_value_heads"), cfg.get("head_dim"),
                     cfg.get("intermediate_size"))


def _from_gguf(path: Path) -> BaseShape:
    import gguf

    fields = gguf.GGUFReader(path).fields

    def get(key):
        return fields[key].contents() if key in fields else None

    arch = get("general.architecture")
    return BaseShape(str(path), get(f"{arch}.block_count"), get(f"{arch}.embedding_length"),
                     get(f"{arch}.attention.head_count"), get(f"{arch}.attention.head_count_kv"),
                     get(f"{arch}.attention.key_length"), get(f"{arch}.feed_forward_length"))


def lora_shapes(weights: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """module -> {'A': shape, 'B': shape}, read from the safetensors header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="np") as f:
            names = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a corrupt or foreign file
        raise AdapterError(f"{weights} is not a readable safetensors file ({e})") from e
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in names.items():
        m = TENSOR.match(name)
        if not m:
            raise AdapterError(f"{weights}: tensor {name!r} is not a LoRA A/B matrix (full weights are not supported)")
        out.setdefault(m["module"], {})[m["ab"]] = shape
    return out


def validate_adapter(path: Path | str, base: Any = None, check_name: bool = True) -> AdapterInfo:
    """The adapter's description, or AdapterError saying what is missing or does not fit `base`."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist")
    if not (path / CONFIG).is_file():
        raise AdapterError(f"{path} has no {CONFIG}: not a peft adapter folder")
    try:
        cfg = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except ValueError as e:
        raise AdapterError(f"{path / CONFIG} is not valid JSON ({e})") from e
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"{path}: peft_type is {cfg.get('peft_type')!r}, only LoRA adapters are served")
    if not (path / WEIGHTS).is_file():
        pickled = [n for n in PICKLED if (path / n).is_file()]
        if pickled:
            raise AdapterError(f"{path / pickled[0]}: pickled weights are refused (they can run code when loaded); "
                               "re-save the adapter with save_pretrained(..., safe_serialization=True)")
        raise AdapterError(f"{path} has no {WEIGHTS}")
    shapes = lora_shapes(path / WEIGHTS)
    if not shapes:
        raise AdapterError(f"{path / WEIGHTS} holds no LoRA tensors")
    r = int(cfg.get("r") or 0)
    for module, ab in shapes.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{path}: {module} has lora_{'A' if 'A' not in ab else 'B'} missing")
        if len(ab["A"]) != 2 or len(ab["B"]) != 2 or ab["A"][0] != ab["B"][1]:
            raise AdapterError(f"{path}: {module} has inconsistent LoRA shapes A{ab['A']} B{ab['B']}")
        if ab["A"][0] != r and not cfg.get("rank_pattern"):
            raise AdapterError(f"{path}: {module} has rank {ab['A'][0]} but adapter_config.json says r={r}")
    shape = base_shape(base)
    if shape is not None:
        _check_fit(path, cfg, shapes, shape, check_name)
    layers = sorted({int(m.group(1)) for mod in shapes if (m := LAYER.search(f".{mod}."))})
    targets = cfg.get("target_modules") or []
    return AdapterInfo(path, cfg.get("base_model_name_or_path"), r, float(cfg.get("lora_alpha") or r),
                       sorted(targets) if isinstance(targets, list) else [str(targets)], len(shapes), layers,
                       path / GGUF if (path / GGUF).is_file() else None)


def _check_fit(path: Path, cfg: dict, shapes: dict, base: BaseShape, check_name: bool) -> None:
    trained_on, serving = model_name(cfg.get("base_model_name_or_path")), model_name(base.name)
    if check_name and trained_on and serving and trained_on != serving:
        raise AdapterError(f"{path} was trained on {cfg.get('base_model_name_or_path')!r}, not on {base.name!r}")
    for module, ab in shapes.items():
        m = LAYER.search(f".{module}.")
        if m and base.layers is not None and int(m.group(1)) >= base.layers:
            raise AdapterError(f"{path}: {module} is in layer {m.group(1)}, but {base.name} has {base.layers} layers")
        want = base.dims(module.split(".")[-1])
        got = (ab["A"][1], ab["B"][0])
        if want and got != want:
            raise AdapterError(f"{path}: {module} maps {got[0]}->{got[1]} features, but {base.name} needs "
                               f"{want[0]}->{want[1]}: the adapter belongs to a different base model")
