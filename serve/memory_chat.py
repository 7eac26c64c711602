"""Chat questions about GPU memory, recognised by rules -> the calculator's result as a numbered, citable passage."""

from __future__ import annotations

import hashlib
import re

from .errors import BadRequest
from .memory import PRESETS, estimate, model_from
from .retrieval import Passage

_MEMORY = re.compile(r"\b(?:memory|VRAM|GPU RAM|gigabytes?|GB|GiB)\b|памят|видеопамят|\bГБ\b|гигабайт", re.I)
_SIZE = re.compile(r"(\d+(?:[.,]\d+)?)\s*-?\s*(?:B\b|billion|bn\b|млрд|миллиард)", re.I)
_METHOD = [  # first match wins: QLoRA before LoRA, a method before the generic "fine-tune"
    ("qlora", re.compile(r"\bQLoRA\b|\b4[- ]?bit\b|\bNF4\b|4[- ]?бит", re.I)),
    ("lora", re.compile(r"\bLoRA\b", re.I)),
    ("inference", re.compile(r"\binferenc\w*|\bserv(?:e|ing)\b|\brun(?:ning)? (?:the |a )?model\b|инференс|запуск", re.I)),
    ("full", re.compile(r"\bfull\b|fine-?tun\w*|\btrain\w*|полн\w*|дообуч\w*|обучени\w*|обучить", re.I)),
]
_PRECISION = [("fp32", r"\bfp32\b|float32|32-?bit"), ("fp16", r"\bfp16\b|float16"), ("int8", r"\bint8\b|8-?bit|8 бит"),
              ("bf16", r"\bbf16\b|bfloat16|16-?bit|16 бит")]
_BATCH = re.compile(r"batch(?:\s*size)?\s*(?:of\s*|=\s*)?(\d+)|батч\w*\s*(\d+)", re.I)
_SEQ = re.compile(r"(\d+)\s*(?:-?\s*token|токен)|(?:sequence|seq|context)\s*(?:length|len)?\s*(?:of\s*|=\s*)?(\d+)", re.I)


def _preset(size_b: float) -> str | None:
    """The preset within 10% of a size in billions. Example: 65 -> '65b'; 30 -> '33b'; 3 -> None."""
    sizes = {k: float(re.match(r"[a-z0-9-]*?(\d+)b", k).group(1)) for k in PRESETS}
    best = min(sizes, key=lambda k: abs(sizes[k] - size_b))
    return best if abs(sizes[best] - size_b) <= 0.1 * sizes[best] else None


def memory_question(text: str) -> dict | None:
    """The calculator's inputs when `text` asks about memory for a model size, else None.

    Example: 'How much memory does QLoRA need for a 65B model?' -> {'preset': '65b', 'method': 'qlora', ...}
    """
    if not _MEMORY.search(text):
        return None
    size = _SIZE.search(text)
    preset = _preset(float(size.group(1).replace(",", "."))) if size else None
    if preset is None:
        return None
    method = next((m for m, rx in _METHOD if rx.search(text)), "inference")
    precision = next((p for p, rx in _PRECISION if re.search(rx, text, re.I)), "bf16")
    ask = {"preset": preset, "method": method, "precision": precision}
    if m := _BATCH.search(text):
        ask["batch_size"] = int(m.group(1) or m.group(2))
    if m := _SEQ.search(text):
        ask["seq_len"] = int(m.group(1) or m.group(2))
    if method == "qlora":
        ask["lora_rank"] = 64  # the QLoRA paper's setting for its large models
    return ask


def calculator_passages(question: str) -> list[Passage]:
    """[] or one passage holding the calculator's estimate for the question, to be numbered and cited like any other."""
    ask = memory_question(question)
    if ask is None:
        return []
    args = dict(ask)
    try:
        est = estimate(model_from(args.pop("preset")), args.pop("method"), **args)
    except BadRequest:
        return []
    text = est.text(f"the {ask['preset'].upper()} model")
    key = hashlib.sha1(repr(sorted(ask.items())).encode()).hexdigest()[:8]
    section = f"{ask['method']}, {ask['preset']}, {ask['precision']}"
    return [Passage(f"memory-calculator:{key}", "memory-calculator", "GPU memory calculator", section,
                    "ftatlas memory (serve/memory.py)", text, 1.0, "en", "calculator")]
