"""LoRA fine-tuning with TRL's SFTTrainer: RAFT examples -> runs/<run-id>/ with the adapter, checkpoints and records."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from serve.adapter import validate_adapter
from .base import Base, resolve_base
from .data import TRAIN, VALIDATION, default_folder, data_hash, read_split
from .errors import FinetuneError
from .plot import plot_loss


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    adapter: Path
    gguf: Path | None
    steps: int
    train_seconds: float
    s_per_step: float
    stopped_by_budget: bool
    train_loss: float | None
    eval_loss: float | None

    def text(self) -> str:
        how = "stopped by the time budget" if self.stopped_by_budget else "finished"
        losses = f"train loss {self.train_loss:.3f}" if self.train_loss is not None else "no train loss logged"
        if self.eval_loss is not None:
            losses += f", validation loss {self.eval_loss:.3f}"
        return (f"run {self.run_id} {how} after {self.steps} steps in {self.train_seconds:.0f} s "
                f"({self.s_per_step:.1f} s/step); {losses}\nadapter: {self.adapter}"
                + (f"\nGGUF adapter for llama.cpp: {self.gguf}" if self.gguf else ""))


def to_prompt_completion(row: dict) -> dict:
    """A chat example as TRL's conversational prompt-completion, so the loss covers the answer only.

    Example: {'messages': [sys, user, assistant]} -> {'prompt': [sys, user], 'completion': [assistant]}.
    """
    messages = row["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise FinetuneError(f"example {row.get('meta', {}).get('id', '?')} does not end with an assistant message")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 autocast trains about 1.5x faster."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def device_plan(settings) -> dict:
    """Where and how to train: CUDA or CPU, bf16 autocast where the hardware supports it; QLoRA only on CUDA."""
    import torch

    cuda = torch.cuda.is_available()
    bf16 = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
    if settings.finetune.qlora:
        if not cuda:
            raise FinetuneError("finetune.qlora needs a CUDA GPU (4-bit NF4 via bitsandbytes); "
                                "set finetune.qlora: false to train the float model on this machine")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise FinetuneError("finetune.qlora needs bitsandbytes: pip install 'ftatlas[gpu]'") from e
    return {"cuda": cuda, "bf16": bf16, "qlora": bool(settings.finetune.qlora)}


def load_model(base: Base, plan: dict):
    import torch
    from transformers import AutoModelForCausalLM

    # On CUDA the frozen base is stored in bf16; on CPU it stays float32 and bf16 is used through autocast only.
    kwargs: dict = {"dtype": torch.bfloat16 if plan["bf16"] and plan["cuda"] else torch.float32}
    if plan["qlora"]:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if plan["bf16"] else torch.float16)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(base.path, **kwargs)
    except OSError as e:
        raise FinetuneError(f"cannot load base model {base.path!r}: {e}") from e
    if plan["qlora"]:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model.config.use_cache = False
    return model


def make_trainer(settings, data: Path, output_dir: Path, base: Base, *, max_steps: int | None = None,
                 callbacks: list | None = None, progress: bool = True, echo: Callable[[str], None] = print,
                 evaluate: bool = True):
    """The SFTTrainer for one run: LoRA from settings, loss on the assistant answer only, seeds fixed."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from .answer_loss import AnswerOnlyTrainer

    ft = settings.finetune
    plan = device_plan(settings)
    steps = max_steps or ft.max_steps
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def fitting(rows: list[dict], split: str) -> list[dict]:
        # The builder already fits examples to max_seq_len with this tokenizer family; a different base may not,
        # and an example cut by truncation would lose its answer, so it is dropped instead.
        out = [r for r in rows if len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)
                                      ["input_ids"]) <= ft.max_seq_len]
        if len(out) < len(rows):
            echo(f"{split}: {len(rows) - len(out)} examples longer than max_seq_len={ft.max_seq_len} left out")
        return out

    def chosen(rows: list[dict]) -> list[dict]:
        return [r for r in rows if r.get("meta", {}).get("language", "en") in ft.train_languages]

    train_rows = fitting(chosen(read_split(data, TRAIN)), "train")
    if not train_rows:
        raise FinetuneError(f"{data / TRAIN} has no examples in {ft.train_languages} that fit "
                            f"max_seq_len={ft.max_seq_len}")
    val_path = Path(data) / VALIDATION
    val_rows = fitting(chosen(read_split(data, VALIDATION)), "validation") if evaluate and val_path.is_file() else []
    train_ds = Dataset.from_list([to_prompt_completion(r) for r in train_rows])
    val_ds = Dataset.from_list([to_prompt_completion(r) for r in val_rows]) if val_rows else None

    args = SFTConfig(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=ft.batch_size,
        per_device_eval_batch_size=ft.batch_size, gradient_accumulation_steps=ft.grad_accum,
        learning_rate=ft.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20),
        logging_steps=max(1, min(10, steps // 20)), logging_first_step=True,
        eval_strategy="steps" if val_ds is not None else "no", eval_steps=max(25, steps // 4),
        save_strategy="steps", save_steps=max(10, steps // 10), save_total_limit=2,
        max_length=ft.max_seq_len, completion_only_loss=True, packing=False,
        bf16=plan["bf16"], fp16=False, use_cpu=not plan["cuda"],
        # Checkpointing activations pays off in GPU memory; on CPU it only costs time.
        activation_checkpointing=plan["cuda"], seed=ft.seed, data_seed=ft.seed,
        report_to="none", disable_tqdm=not progress, dataloader_num_workers=0,
        # Validation needs the loss only; gathering logits would also undo the answer-only saving.
        prediction_loss_only=True, train_sampling_strategy="group_by_length" if ft.group_by_length else "random",
    )
    lora = LoraConfig(r=ft.lora_r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
                      target_modules=list(ft.target_modules), bias="none", task_type="CAUSAL_LM")
    trainer_class = AnswerOnlyTrainer if ft.answer_only_logits else SFTTrainer
    return trainer_class(model=load_model(base, plan), args=args, train_dataset=train_ds, eval_dataset=val_ds,
                         processing_class=tokenizer, peft_config=lora, callbacks=callbacks or [])


def latest_run(runs: Path) -> str | None:
    """The run whose newest checkpoint was written last (the one --resume continues)."""
    from transformers.trainer_utils import get_last_checkpoint

    found = [(Path(ckpt).stat().st_mtime, d.name) for d in runs.glob("*")
             if d.is_dir() and not d.is_symlink() and (d / "checkpoints").is_dir()
             and (ckpt := get_last_checkpoint(str(d / "checkpoints")))]
    return max(found)[1] if found else None


def train(settings, data: Path | None = None, *, run_id: str | None = None, max_minutes: float | None = None,
          max_steps: int | None = None, resume: bool = False, base_model: str | None = None, progress: bool = True,
          echo: Callable[[str], None] = print) -> RunResult:
    """Train a LoRA adapter on the built examples; write runs/<run-id>/ and return what happened."""
    from transformers.trainer_utils import get_last_checkpoint

    ft = settings.finetune
    data = Path(data) if data else default_folder(settings)
    read_split(data, TRAIN)  # fail early, before loading any model, when the data is missing
    device_plan(settings)  # and when QLoRA is asked for where it cannot run
    runs = settings.path(ft.runs_dir)
    if resume and not run_id:
        run_id = latest_run(runs)
        if run_id is None:
            raise FinetuneError(f"--resume: no run with checkpoints under {runs}")
    if run_id is not None and (run_id.startswith("latest") or not re.fullmatch(r"[\w.-]+", run_id)):
        raise FinetuneError(f"run id {run_id!r}: use letters, digits, '.', '_' or '-' (and not 'latest…')")
    base = resolve_base(settings, base_model)
    run_id = run_id or datetime.now().strftime("%Y%m%d-%H%M%S") + (f"-{base.name}" if base.name else "")
    run_dir = runs / run_id
    checkpoint = get_last_checkpoint(str(run_dir / "checkpoints")) if (run_dir / "checkpoints").is_dir() else None
    if resume and checkpoint is None:
        raise FinetuneError(f"--resume: run {run_id} has no checkpoint under {run_dir / 'checkpoints'}")
    if not resume and checkpoint is not None:
        raise FinetuneError(f"run {run_id} already has checkpoints: pass --resume to continue it, or another --run-id")
    digest = data_hash(data)
    record = run_dir / "run.json"
    if resume and record.is_file() and json.loads(record.read_text()).get("data_hash") not in (None, digest):
        raise FinetuneError(f"the training data in {data} changed since run {run_id} started; start a new run")

    run_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now().isoformat(timespec="seconds")
    shown = settings.relative  # run.json is a record kept beside the project: no machine's absolute paths
    info = {"run_id": run_id, "base_model": base.id, "base_path": shown(base.path), "base_sha256": base.sha256,
            "data": shown(data), "data_hash": digest, "started": started,
            "resumed_from": shown(checkpoint) if checkpoint else None}
    record.write_text(json.dumps(info, indent=2))
    from .callbacks import StepTimer, TimeBudget

    budget, timer = TimeBudget(max_minutes), StepTimer()
    trainer = make_trainer(settings, data, run_dir / "checkpoints", base, max_steps=max_steps,
                           callbacks=[budget, timer], progress=progress, echo=echo)
    (run_dir / "train_config.json").write_text(json.dumps(
        {"finetune": ft.model_dump(mode="json"), "max_steps": trainer.args.max_steps, "max_minutes": max_minutes,
         "device": device_plan(settings), "sft": json.loads(trainer.args.to_json_string())}, indent=2))
    echo(f"training run {run_id}: base {base.id}, {len(trainer.train_dataset)} examples in {ft.train_languages}, "
         f"{trainer.args.max_steps} steps" + (f", budget {max_minutes:g} min" if max_minutes else ""))
    t0 = time.monotonic()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.monotonic() - t0

    adapter = run_dir / "adapter"
    gguf_path = save_adapter(trainer.model, base, adapter)
    history = trainer.state.log_history
    (run_dir / "log_history.json").write_text(json.dumps(history, indent=2))
    plot_loss(history, run_dir / "loss.png", title=f"{run_id} — {base.id}")
    train_losses = [r["loss"] for r in history if "loss" in r]
    eval_losses = [r["eval_loss"] for r in history if "eval_loss" in r]  # the last step is always evaluated
    result = RunResult(run_id, run_dir, adapter, gguf_path, trainer.state.global_step, seconds, timer.s_per_step,
                       budget.stopped, train_losses[-1] if train_losses else None, eval_losses[-1] if eval_losses else None)
    record.write_text(json.dumps({**info, **{k: shown(v) if isinstance(v, Path) else v for k, v in asdict(result).items()},
                                  "finished": datetime.now().isoformat(timespec="seconds"),
                                  "versions": _versions()}, indent=2))
    _point_latest(runs, run_id, "latest")
    if base.name:
        _point_latest(runs, run_id, f"latest-{base.name}")
    return result


def save_adapter(model, base: Base, adapter: Path) -> Path | None:
    """Save the "default" LoRA adapter of a peft model (peft layout), check it, and convert it for llama.cpp when the
    base has a GGUF; returns the lora.gguf path, if written."""
    model.peft_config["default"].base_model_name_or_path = base.id  # what vLLM and validate_adapter compare
    # Embeddings are never trained here; "auto" would look the base up on the hub to check for resized vocabularies.
    # Only "default": a DPO model also holds "ref", the frozen copy of the adapter it started from.
    model.save_pretrained(str(adapter), safe_serialization=True, save_embedding_layers=False,
                          selected_adapters=["default"])
    validate_adapter(adapter, model.get_base_model().config, check_name=False)
    if base.gguf is None:
        return None
    from serve.gguf_lora import convert

    return convert(adapter, base.gguf)


def _point_latest(runs: Path, run_id: str, link: str) -> None:
    """runs/<link> -> the run just finished: runs/latest (any base) and runs/latest-<base>, so llm.adapter and
    llm.adapters.<base> can name runs/latest-<base>/adapter."""
    tmp = runs / f".{link}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_id, target_is_directory=True)
    tmp.replace(runs / link)  # rename over the old link: readers never see it missing


def _versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__}
