"""A run -> reports/<run-id>/: results.json (every record), report.md (tables) and PNG charts; full runs also to latest/."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from .aggregate import summarize
from .charts import write_charts
from .configs import BASELINE
from .runner import Run

RETRIEVAL_COLUMNS = ("hit@5", "mrr", "ndcg@10", "context_fact_recall@5", "context_chars@5")
ANSWER_COLUMNS = ("fact_recall", "token_f1", "rouge_l", "embed_sim", "citation_precision", "citation_validity", "quote_precision",
                  "refusal_accuracy", "false_refusal_rate", "language_match", "faithfulness", "answer_correctness",
                  "total_ms_p50", "ttft_ms_p50", "generated_share", "extractive_share", "refused_share",
                  "asked_again_share", "generated_ttft_share_p50")
BREAKDOWN_COLUMNS = ("hit@5", "mrr", "context_fact_recall@5", "fact_recall", "token_f1", "rouge_l",
                     "refusal_accuracy", "false_refusal_rate", "language_match", "citation_precision",
                     "generated_share", "extractive_share", "refused_share")


def new_run_id(reports_dir: Path) -> str:
    """A sortable id not yet used in reports_dir. Example: '20250101-120000' (then '20250101-120000-2')."""
    base = time.strftime("%Y%m%d-%H%M%S")
    rid, n = base, 1
    while (Path(reports_dir) / rid).exists():
        n += 1
        rid = f"{base}-{n}"
    return rid


def fmt(value, key: str = "") -> str:
    """A table cell. Example: (0.12345, 'mrr') -> '0.123'; (1234.5, 'total_ms_p50') -> '1234'; None -> '–'."""
    if value is None:
        return "–"
    if key.endswith("_ms_p50") or key.startswith("context_chars"):
        return f"{value:.0f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(rows: list[dict], lead: tuple[str, ...], columns: tuple[str, ...]) -> str:
    """A Markdown table of the lead fields and the columns that hold any value. Example: see report.md."""
    columns = tuple(c for c in columns if any(r.get(c) is not None for r in rows))
    if not rows or not columns:
        return "_no data_\n"
    head = [*lead, *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(r.get(k, "")) for k in lead] + [fmt(r.get(c), c) for c in columns]) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def baseline_delta(rows: list[dict]) -> list[dict]:
    """What our retrieval adds over the stock pipeline: each retrieving row minus the llamaindex-stock row.

    Example: atlas-rag hit@5 0.9, llamaindex-stock 0.7 -> [{'config': 'atlas-rag', 'hit@5': 0.2, ...}].
    """
    base = next((r for r in rows if r["config"] == BASELINE), None)
    if base is None:
        return []
    out = []
    for r in rows:
        if r["config"] != BASELINE and r.get("hit@5") is not None:
            out.append({"config": r["config"], **{k: r[k] - base[k] for k in RETRIEVAL_COLUMNS
                                                  if r.get(k) is not None and base.get(k) is not None}})
    return out


def summaries(records: list[dict]) -> dict:
    return {"by_config": summarize(records), "by_set": summarize(records, ("set", "config")),
            "by_set_language": summarize(records, ("set", "config", "language")),
            "by_language": summarize(records, ("config", "language")),
            "by_category": summarize(records, ("config", "category"))}


def set_rows(rows: list[dict]) -> list[dict]:
    """Rows of several question sets, ordered so each configuration's sets sit side by side.

    Example: [dev/a, dev/b, heldout/a, heldout/b] -> [dev/a, heldout/a, dev/b, heldout/b].
    """
    order = {c: i for i, c in enumerate(dict.fromkeys(r["config"] for r in rows))}
    return sorted(rows, key=lambda r: order[r["config"]])


def sets_line(questions) -> str:
    """How many questions of each set. Example: 84 dev and 76 heldout questions -> 'dev 84, heldout 76'."""
    counts: dict[str, int] = {}
    for q in questions:
        counts[q.gold_set] = counts.get(q.gold_set, 0) + 1
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def markdown(run: Run, summary: dict, charts: list[str]) -> str:
    notes = {c.name: c.note for c in run.configs}
    rows = [{**r, "note": notes.get(r["config"], "")} for r in summary["by_config"]]
    took = (run.finished or time.time()) - run.started
    parts = [
        f"# ftatlas eval {run.id}\n",
        f"- status: **{run.status}** ({len(run.records)} of {len(run.configs) * len(run.questions)} question runs)",
        f"- backend: {run.backend}; answers: {'yes' if run.answers else 'no (retrieval only)'}; judge: {run.judge or 'none'}",
        f"- {len(run.questions)} questions ({sets_line(run.questions)}) x {len(run.configs)} configurations; {took:.0f} s",
        *(f"- {n}" for n in run.notes),
        "\n## Retrieval (against gold documents)\n",
        table(rows, ("config", "note", "n"), RETRIEVAL_COLUMNS),
    ]
    delta = baseline_delta(rows)
    if delta:
        parts += ["\n### Over the LlamaIndex stock pipeline (difference)\n", table(delta, ("config",), RETRIEVAL_COLUMNS)]
    if run.answers:
        parts += ["\n## Answers\n", table(rows, ("config", "n", "errors"), ANSWER_COLUMNS)]
    parts += ["\n## By question set\n", table(set_rows(summary["by_set"]), ("config", "set", "n"), BREAKDOWN_COLUMNS),
              "\n## By question set and language\n",
              table(set_rows(summary["by_set_language"]), ("config", "set", "language", "n"), BREAKDOWN_COLUMNS),
              "\n## By language\n", table(summary["by_language"], ("config", "language", "n"), BREAKDOWN_COLUMNS),
              "\n## By category\n", table(summary["by_category"], ("config", "category", "n"), BREAKDOWN_COLUMNS)]
    if charts:
        parts += ["\n## Charts\n", *(f"![{c[:-4]}]({c})\n" for c in charts)]
    parts.append(
        "\n## Metrics\n\nhit@5, MRR (depth 10), nDCG@10: ranks of passages from gold documents; context fact recall@5: share of "
        "the required facts present in the top 5 passages (context chars@5: their total length, since longer passages hold "
        "more facts). fact recall: share of facts in the answer; token F1 and ROUGE-L "
        "against the reference over Unicode word tokens; embed sim: cosine of answer and reference (bundled embedder); "
        "citation precision: cited sources from gold documents; citation validity: every [n] points to a returned source; "
        "refusal accuracy on out-of-scope questions, false refusal rate on answerable ones; language match: answer in the "
        "question's language. faithfulness and answer correctness (RAGAS definitions) need --judge-endpoint. "
        "Latency: median per question; TTFT is the time to the first streamed token. generated / extractive / refused "
        "share: how the answers to answerable questions came to be (written by the model and passing the grounding check, "
        "quoted from the passages as the fallback, or declined); asked again share: answers for which the model declined "
        "a question retrieval was confident about and was asked once more without the way out; generated ttft share: for written answers, the median "
        "share of the total time spent before the first token.\n")
    return "\n".join(parts)


def write_report(run: Run, reports_dir: Path, latest: bool = True) -> Path:
    """Write the run's folder; when `latest` and the run completed, mirror it into reports_dir/latest/."""
    folder = Path(reports_dir) / run.id
    folder.mkdir(parents=True, exist_ok=True)
    summary = summaries(run.records)
    charts = write_charts(summary["by_config"], folder)
    data = {"id": run.id, "status": run.status, "backend": run.backend, "answers": run.answers, "judge": run.judge,
            "started": run.started, "finished": run.finished, "questions": [q.id for q in run.questions],
            "sets": sorted({q.gold_set for q in run.questions}),
            "configs": [asdict(c) for c in run.configs], "notes": run.notes, "summary": summary, "records": run.records}
    _write_atomic(folder / "results.json", json.dumps(data, ensure_ascii=False, indent=1))
    _write_atomic(folder / "report.md", markdown(run, summary, charts))
    if latest and run.status == "complete":
        _replace_folder(Path(reports_dir) / "latest", folder, ("report.md", "results.json", *charts))
    return folder


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _replace_folder(target: Path, source: Path, names) -> None:
    """Fill a fresh folder beside `target`, then swap it in: a failure half-way leaves the old `target` whole."""
    tmp, old = target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in names:
            shutil.copy2(source / name, tmp / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
