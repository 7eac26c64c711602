"""DPO with TRL's DPOTrainer: continue the shipped SFT adapter's own weights on preference pairs, with that same SFT
adapter (a frozen copy, TRL's "ref" adapter) as the reference model. Writes runs/<id>/ like an SFT run."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from serve.adapter import validate_adapter

from .base import resolve_base
from .errors import FinetuneError
from .pairs import CARD
from .plot import loss_points
from .plot import plot_lines
from .train import _point_latest, _versions, device_plan, load_model, save_adapter


@dataclass
class DpoResult:
    run_id: str
    run_dir: Path
    adapter: Path
    gguf: Path | None
    steps: int
    train_seconds: float
    beta: float
    pairs: int
    train_loss: float | None
    margin_first: float | None  # chosen-minus-rejected reward margin at the first logged step
    margin_last: float | None

    def text(self) -> str:
        return (f"DPO run {self.run_id}: {self.steps} steps on {self.pairs} pairs in {self.train_seconds:.0f} s, beta "
                f"{self.beta}; reward margin {self.margin_first} -> {self.margin_last}, loss {self.train_loss}\n"
                f"adapter: {self.adapter}" + (f"\nGGUF adapter for llama.cpp: {self.gguf}" if self.gguf else ""))


def read_pairs(path: Path) -> list[dict]:
    """The rows of a pairs file as TRL reads them (prompt, chosen, rejected); a bad line is named."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"no preference pairs at {path}: run `ftatlas feedback export` first")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({k: row[k] for k in ("prompt", "chosen", "rejected")})
        except (ValueError, KeyError, TypeError) as e:
            raise FinetuneError(f"{path}:{n}: not a preference pair (prompt, chosen, rejected): {e}") from e
    if not rows:
        raise FinetuneError(f"{path} holds no pairs: rate answers, or sample self-supplied pairs, then export again")
    return rows


def make_dpo_trainer(settings, pairs: list[dict], sft_adapter: Path, base, output_dir: Path, *, max_steps: int,
                     beta: float, learning_rate: float, max_length: int, progress: bool = True):
    """A DPOTrainer whose policy is the SFT adapter, trainable, and whose reference is a frozen copy of it."""
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    ft, plan = settings.finetune, device_plan(settings)
    validate_adapter(sft_adapter, base.path if Path(str(base.path)).is_dir() else None, check_name=False)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = PeftModel.from_pretrained(load_model(base, plan), str(sft_adapter), is_trainable=True)
    args = DPOConfig(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=1,
        gradient_accumulation_steps=ft.grad_accum, learning_rate=learning_rate, lr_scheduler_type="constant",
        beta=beta, max_length=max_length, logging_steps=1, save_strategy="no", bf16=plan["bf16"],
        use_cpu=not plan["cuda"], seed=ft.seed, data_seed=ft.seed, report_to="none", disable_tqdm=not progress,
        dataloader_num_workers=0, activation_checkpointing=plan["cuda"],
    )
    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(pairs),
                      processing_class=tokenizer)


def dpo(settings, pairs_path: Path, sft_adapter: Path, *, base_name: str | None = None, run_id: str | None = None,
        max_steps: int = 40, beta: float = 0.1, learning_rate: float = 5e-5, max_length: int = 2048,
        progress: bool = True, echo: Callable[[str], None] = print) -> DpoResult:
    """Train; write runs/<run-id>/ with adapter/ (+ lora.gguf), run.json (the SFT card's fields, beta, pairs by
    source, reward margins), log_history.json and margins.png."""
    pairs = read_pairs(pairs_path)
    sft_adapter = Path(sft_adapter)
    base = resolve_base(settings, base_name)
    run_id = run_id or datetime.now().strftime("%Y%m%d-%H%M%S") + f"-dpo-{base.name or 'base'}"
    run_dir = settings.path(settings.finetune.runs_dir) / run_id
    if (run_dir / "adapter").exists():
        raise FinetuneError(f"run {run_id} already has an adapter; choose another --run-id")
    run_dir.mkdir(parents=True, exist_ok=True)
    shown = settings.relative
    card_path = Path(pairs_path).parent / CARD
    by_source = json.loads(card_path.read_text(encoding="utf-8")).get("by_source") if card_path.is_file() else None
    info = {"run_id": run_id, "method": "dpo", "base_model": base.id, "base_sha256": base.sha256,
            "sft_adapter": shown(sft_adapter), "data": shown(pairs_path),
            "data_hash": hashlib.sha256(Path(pairs_path).read_bytes()).hexdigest(), "pairs": len(pairs),
            "pairs_by_source": by_source, "beta": beta, "learning_rate": learning_rate, "max_length": max_length,
            "started": datetime.now().isoformat(timespec="seconds")}
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    trainer = make_dpo_trainer(settings, pairs, sft_adapter, base, run_dir / "checkpoints", max_steps=max_steps,
                               beta=beta, learning_rate=learning_rate, max_length=max_length, progress=progress)
    if len(trainer.train_dataset) < len(pairs):  # TRL drops a pair whose prompt alone fills max_length
        echo(f"{len(pairs) - len(trainer.train_dataset)} pairs longer than max_length={max_length} left out")
    if not len(trainer.train_dataset):
        raise FinetuneError(f"no pair fits max_length={max_length}; raise --max-length")
    echo(f"DPO run {run_id}: {len(trainer.train_dataset)} pairs, {max_steps} steps, beta {beta}, from {shown(sft_adapter)}")
    t0 = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - t0
    adapter = run_dir / "adapter"
    gguf_path = save_adapter(trainer.model, base, adapter)  # the policy only, not the "ref" copy
    history = trainer.state.log_history
    (run_dir / "log_history.json").write_text(json.dumps(history, indent=2))
    plot_lines(history, (("rewards/margins", "chosen - rejected", "-"), ("rewards/chosen", "chosen", ":"),
                         ("rewards/rejected", "rejected", ":")), run_dir / "margins.png",
               "implicit reward (beta x log-ratio to the SFT adapter)", f"{run_id}: DPO reward margins (beta {beta})")
    margins = loss_points(history, "rewards/margins")[1]
    losses = loss_points(history, "loss")[1]
    result = DpoResult(run_id, run_dir, adapter, gguf_path, trainer.state.global_step, seconds, beta, len(pairs),
                       losses[-1] if losses else None, margins[0] if margins else None, margins[-1] if margins else None)
    (run_dir / "run.json").write_text(json.dumps(
        {**info, **{k: shown(v) if isinstance(v, Path) else v for k, v in asdict(result).items()},
         "s_per_step": seconds / max(1, result.steps), "reward_margins": margins,
         "finished": datetime.now().isoformat(timespec="seconds"), "versions": _versions()}, indent=2))
    _point_latest(settings.path(settings.finetune.runs_dir), run_id, "latest-dpo")
    return result
