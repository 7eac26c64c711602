"""A finished run's adapter -> adapters/<base>/, the committed default: size-checked files and a card that says
where it came from (base and its hash, data hash, steps, losses, time, eval rows)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from serve.bases import BASES

from serve.adapter import CONFIG, GGUF, WEIGHTS, validate_adapter
from serve.errors import AdapterError

MAX_FILE_MB, MAX_TOTAL_MB = 10.0, 20.0  # what a git repository carries without LFS
RUN_FIELDS = ("run_id", "base_model", "base_sha256", "data_hash", "steps", "train_seconds", "s_per_step",
              "stopped_by_budget", "train_loss", "eval_loss", "started", "finished", "versions")
CARD_JSON, CARD_MD = "card.json", "README.md"


def ship(run_dir: Path | str, to: Path | str, root: Path | None = None) -> Path:
    """Copy the run's adapter (peft weights, config and lora.gguf) and its card into `to`, replacing what was there
    only once the new folder is whole; refuse files over MAX_FILE_MB or a folder over MAX_TOTAL_MB. `root` resolves
    the run's project-relative data folder (for the example count on the card)."""
    run_dir, to = Path(run_dir), Path(to)
    adapter = run_dir / "adapter"
    record = run_dir / "run.json"
    if not record.is_file() or not (adapter / WEIGHTS).is_file():
        raise AdapterError(f"{run_dir} is not a finished training run (no run.json or adapter/{WEIGHTS})")
    validate_adapter(adapter)
    files = [adapter / n for n in (CONFIG, WEIGHTS, GGUF) if (adapter / n).is_file()]
    sizes = {f.name: f.stat().st_size / 2**20 for f in files}
    too_big = [f"{n} {mb:.1f} MB" for n, mb in sizes.items() if mb > MAX_FILE_MB]
    if too_big or sum(sizes.values()) > MAX_TOTAL_MB:
        raise AdapterError(f"{adapter}: {', '.join(too_big) or f'{sum(sizes.values()):.1f} MB in all'} is over the "
                           f"{MAX_FILE_MB:g} MB per file / {MAX_TOTAL_MB:g} MB per adapter a commit may carry; "
                           "train a smaller rank or fewer modules")
    card = adapter_card(run_dir, sizes, root)
    tmp = to.with_name(f".{to.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in files:
            shutil.copy2(f, tmp / f.name)
        (tmp / CARD_JSON).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / CARD_MD).write_text(card_markdown(card), encoding="utf-8")
        old = to.with_name(f".{to.name}.{os.getpid()}.old")
        if to.exists():
            to.rename(old)
        tmp.rename(to)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return to


def record_eval(folder: Path | str, report: Path | str, shown: str | None = None) -> Path:
    """Put a report's summary rows on a shipped adapter's card (card.json and its README.md), written whole or not at
    all: the card shows what was last measured, not what the run's own eval saw. AdapterError when the folder has no
    card or the report no results.json with a summary. `shown`: the report's path as the card names it
    (Settings.relative), default as given.

    Example: (adapters/gemma3, reports/latest) -> the card's eval is {'report': 'reports/latest', 'report_id':
    '20261202-125046', 'by_config': [...], 'by_set': [...], ...}.
    """
    folder, report = Path(folder), Path(report)
    try:
        card = json.loads((folder / CARD_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AdapterError(f"{folder}: no readable {CARD_JSON} (is it a shipped adapter?): {e}") from e
    try:
        results = json.loads((report / "results.json").read_text(encoding="utf-8"))
        summary = results["summary"]
        if not isinstance(summary, dict) or not summary.get("by_config"):
            raise ValueError("its summary has no by_config rows")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AdapterError(f"{report}: not a finished eval report (results.json with a summary): {e}") from e
    card["eval"] = {"report": shown or str(report), "report_id": results.get("id"), **summary}
    for name, text in ((CARD_JSON, json.dumps(card, indent=2, ensure_ascii=False) + "\n"), (CARD_MD, card_markdown(card))):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)
    return folder / CARD_JSON


def shipped_folder(run_dir: Path | str) -> Path:
    """adapters/<base> for the base the run trained. Example: a Gemma 3 run -> adapters/gemma3."""
    run = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8")) if (Path(run_dir) / "run.json").is_file() else {}
    name = next((b.name for b in BASES.values() if b.hf_id == run.get("base_model")), None)
    if name is None:
        raise AdapterError(f"{run_dir}: its base {run.get('base_model')!r} is not a shipped base; pass --to")
    return Path("adapters") / name


def adapter_card(run_dir: Path, sizes: dict[str, float], root: Path | None = None) -> dict:
    """What the shipped adapter is: the run's record, its training settings, the examples and epochs it saw and, if
    measured, its eval rows."""
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    card = {k: run.get(k) for k in RUN_FIELDS}
    config = run_dir / "train_config.json"
    batch = None
    if config.is_file():
        recorded = json.loads(config.read_text(encoding="utf-8"))
        # finetune.* is settings.yaml's; the command line chose the base and the steps, so the card says what ran.
        card["finetune"] = {**(recorded.get("finetune") or {}), "base_model": run.get("base_model"),
                            "max_steps": recorded.get("max_steps")}
        batch = card["finetune"].get("batch_size", 0) * card["finetune"].get("grad_accum", 1)
    data_card = Path(run.get("data") or "") / "data_card.json"
    data_card = data_card if data_card.is_absolute() or root is None else Path(root) / data_card
    if data_card.is_file():
        data = json.loads(data_card.read_text(encoding="utf-8"))
        if data.get("data_hash") == run.get("data_hash") and data.get("train"):
            card["train_examples"] = data["train"]
            card["epochs"] = round(run["steps"] * batch / data["train"], 2) if batch and run.get("steps") else None
    evaluated = run_dir / "eval.json"
    card["eval"] = json.loads(evaluated.read_text(encoding="utf-8")) if evaluated.is_file() else None
    card["files_mb"] = {n: round(mb, 2) for n, mb in sizes.items()}
    return card


def card_markdown(card: dict) -> str:
    """The card for people. Example: '# Adapter card\\n\\n- base: google/gemma-3-270m (sha256 …)\\n…'."""
    lines = ["# Adapter card", "",
             f"- base: {card['base_model']} (sha256 {card.get('base_sha256') or 'unknown'})",
             f"- training data hash: {card['data_hash']}",
             f"- run: {card['run_id']}, {card['steps']} steps in {card['train_seconds'] or 0:.0f} s"
             f" ({'stopped by its time budget' if card.get('stopped_by_budget') else 'finished'})",
             f"- examples: {card.get('train_examples', 'unknown')} ({card.get('epochs', 'unknown')} epochs)",
             f"- losses: train {card.get('train_loss')}, validation {card.get('eval_loss')}",
             f"- files: " + ", ".join(f"{n} {mb} MB" for n, mb in card["files_mb"].items())]
    if card.get("eval"):
        lines += ["", "## Eval", "", "```json", json.dumps(card["eval"], indent=2, ensure_ascii=False), "```"]
    if "gemma" in str(card["base_model"]).lower():
        lines += ["", "Gemma is provided under and subject to the Gemma Terms of Use (ai.google.dev/gemma/terms); "
                      "they cover this adapter too. See NOTICE."]
    return "\n".join(lines) + "\n"
