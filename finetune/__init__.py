"""Corpus + QA -> RAFT SFT examples -> LoRA adapter folder (peft + GGUF). The public surface of the finetune room."""

from serve.adapter import AdapterInfo, validate_adapter
from .base import Base, resolve_base
from .data import DataCard, build_data
from .errors import AdapterError, FinetuneError
from .generate import GeneratorOptions
from serve.gguf_lora import convert as convert_to_gguf
from serve.gguf_lora import gguf_adapter
from .train import RunResult, train

__all__ = [
    "AdapterError", "AdapterInfo", "Base", "DataCard", "FinetuneError", "GeneratorOptions", "RunResult", "build_data",
    "convert_to_gguf", "gguf_adapter", "resolve_base", "train", "validate_adapter",
]
