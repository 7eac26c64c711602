"""`ftatlas bench train`: seconds per step, tokens/s and examples/minute for each base, before and after each lever."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .base import resolve_base
from .callbacks import StepTimer
from .data import default_folder, read_split
from .errors import FinetuneError
from .train import make_trainer

# Each lever is measured on top of the ones before it, so the last row is what `finetune train` does by default.
LEVERS: list[tuple[str, dict]] = [
    ("baseline (full logits)", {"answer_only_logits": False, "group_by_length": False}),
    ("answer-only logits", {"answer_only_logits": True, "group_by_length": False}),
    ("+ length-grouped batches", {"answer_only_logits": True, "group_by_length": True}),
]


@dataclass
class BenchRow:
    base: str
    lever: str
    steps: int  # measured steps (the first, warm-up step is left out when there are more)
    s_per_step: float
    tokens_per_s: float  # real (unpadded) tokens through the model per second
    padded_share: float  # share of the batch that was padding
    examples_per_min: float
    speedup: float  # examples/min over this base's baseline


class _CountingCollator:
    """The trainer's collator, remembering (real tokens, padded size) of each batch it builds, in order."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __call__(self, features):
        batch = self.inner(features)
        mask = batch.get("attention_mask")
        ids = batch["input_ids"]
        self.batches.append((int(mask.sum()) if mask is not None else ids.numel(), ids.numel()))
        return batch


def bench_one(settings, data: Path, base, lever: dict, steps: int) -> tuple[float, int, int, int]:
    """(s/step, measured steps, real tokens, padded tokens) over the measured steps of a short run with one lever."""
    ft = settings.finetune.model_copy(update={**lever, "max_steps": steps, "grad_accum": 1})
    s = settings.model_copy(update={"finetune": ft})
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="ftatlas-bench-") as out:
        trainer = make_trainer(s, data, Path(out), base, max_steps=steps, callbacks=[timer], progress=False,
                               echo=lambda _: None, evaluate=False)
        collator = _CountingCollator(trainer.data_collator)
        trainer.data_collator = collator
        trainer.train()
    measured = timer.durations[1:] or timer.durations
    # One batch per step (grad_accum is 1 here); the dataloader may have built one more ahead of time.
    batches = collator.batches[len(timer.durations) - len(measured): len(timer.durations)]
    return sum(measured) / len(measured), len(measured), sum(b[0] for b in batches), sum(b[1] for b in batches)


def run_bench(settings, bases: list[str], steps: int = 3, data: Path | None = None, out: Path | None = None,
              echo: Callable[[str], None] = print) -> str:
    """Measure every lever for every base; write the rows as JSON to `out` and return them as a table."""
    if steps < 2:
        raise FinetuneError("bench train needs at least 2 steps: the first one is warm-up")
    data = Path(data) if data else default_folder(settings)
    read_split(data)  # fail before loading a model when the data is missing
    rows: list[BenchRow] = []
    for name in bases:
        base = resolve_base(settings, name)
        baseline = None
        for lever, over in LEVERS:
            t0 = time.monotonic()
            s_step, measured, real, padded = bench_one(settings, data, base, over, steps)
            per_min = 60 * settings.finetune.batch_size / s_step
            baseline = baseline or per_min
            row = BenchRow(name, lever, measured, round(s_step, 3), round(real / (s_step * measured), 1),
                           round(1 - real / padded, 3) if padded else 0.0, round(per_min, 2),
                           round(per_min / baseline, 2))
            rows.append(row)
            echo(f"{name:8} {lever:26} {row.s_per_step:7.2f} s/step {row.tokens_per_s:8.1f} tok/s "
                 f"{row.examples_per_min:6.2f} ex/min x{row.speedup:.2f} ({time.monotonic() - t0:.0f} s)")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"steps": steps, "batch_size": settings.finetune.batch_size,
                                   "max_seq_len": settings.finetune.max_seq_len, "data": settings.relative(data),
                                   "rows": [asdict(r) for r in rows]}, indent=2))
    return table(rows)


def table(rows: list[BenchRow]) -> str:
    """The rows as a Markdown table."""
    head = "| base | lever | s/step | tokens/s | padding | examples/min | speed-up |\n|---|---|---|---|---|---|---|"
    return "\n".join([head] + [f"| {r.base} | {r.lever} | {r.s_per_step:.2f} | {r.tokens_per_s:.0f} | "
                               f"{r.padded_share:.0%} | {r.examples_per_min:.2f} | x{r.speedup:.2f} |" for r in rows])
