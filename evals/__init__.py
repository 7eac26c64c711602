"""Fixed questions -> scores -> report. The public surface of the evals room, and the entry point `ftatlas eval` calls."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import gate as gating
from .adapter_run import adapter_note, record_in_run
from .aggregate import summarize
from .backends import Backend, http, in_process
from .configs import BASELINE, Config, all_configs, select
from .errors import EvalError
from .gate import GateResult, gate_metrics, measure, measure_sets, run_gate, write_thresholds
from .gold import SETS, Question, load_questions, load_sets
from .report import new_run_id, set_rows, table, write_report
from .runner import Run, evaluate, execute

INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C
SHOWN = ("hit@5", "mrr", "context_fact_recall@5", "fact_recall", "token_f1", "citation_precision", "refusal_accuracy",
         "false_refusal_rate", "total_ms_p50")


def run_eval(settings, *, endpoint: str | None = None, api_key: str | None = None, configs: list[str] | None = None,
             judge_endpoint: str | None = None, judge_model: str | None = None, judge_api_key: str | None = None,
             limit: int | None = None, retrieval_only: bool = False, progress: bool = True, embedder=None,
             backend: Backend | None = None, reports_dir: Path | None = None, sets: str = "dev") -> tuple[Run, Path]:
    """Run the chosen gold sets (dev, heldout or all) through the chosen configurations and write reports/<run-id>/;
    returns the run and its folder. `limit` takes the first N questions of each set.

    `backend` replaces the in-process engine or endpoint (tests pass one with a stand-in `complete`).
    """
    from ingest.embedder import BUNDLED, Embedder

    questions = load_sets(settings, sets)
    asked = questions
    if limit:
        asked = [q for name in SETS for q in [x for x in questions if x.gold_set == name][:limit]]
    sim_embedder = embedder or Embedder(BUNDLED, settings.ingest.device)
    if backend is None:
        retrieval_embedder = sim_embedder if settings.ingest.embed_model == BUNDLED else None
        backend = (http(endpoint, api_key, settings.llm.timeout_s) if endpoint
                   else in_process(settings, retrieval_embedder, answers=not retrieval_only))
    chosen = select(all_configs(settings, backend.models), configs)
    if retrieval_only and not configs:
        chosen = [c for c in chosen if c.retrieves and not c.model.startswith("atlas-rag-lora")]  # they retrieve as atlas-rag
    reports = Path(reports_dir) if reports_dir else settings.path(settings.evals.reports_dir)
    run = Run(new_run_id(reports), backend.name, chosen, asked, answers=not retrieval_only and backend.complete is not None)
    baseline = None
    if any(c.name == BASELINE for c in chosen):
        from .baseline import StockRetriever

        baseline = StockRetriever(settings, show_progress=progress)
        if run.answers and backend.engine is not None:
            baseline.answer_through(backend.engine)
            run.notes.append(f"{BASELINE}: the stock pipeline's passages, answered by the same engine and prompt as atlas-rag")
        else:
            run.notes.append(f"{BASELINE}: retrieval metrics only (its answers need the in-process engine)")
    if backend.retrieve is None:
        run.notes.append("the endpoint has no /v1/retrieve: rank metrics come from the returned sources (top-k only)")
    judge = None
    if judge_endpoint and run.answers:
        from .judge import Judge

        judge = Judge(judge_endpoint, settings.data_dir / "judge-cache", judge_model, judge_api_key, settings.llm.timeout_s)
        run.judge = f"{judge.model} at {judge_endpoint}"
    from serve.models import configured

    loras = {m: settings.path(spec.folder) for m, spec in configured(settings).items()
             if spec.adapter and any(c.model == m for c in chosen)}
    for model, lora in loras.items():
        run.notes.append(adapter_note(lora, settings.root, model))
    execute(run, backend, baseline=baseline, embedder=sim_embedder, judge=judge, max_tokens=settings.evals.max_tokens,
            temperature=0.0, progress=progress)
    full = run.answers and not limit and sets in ("dev", "all")  # latest stays a full report with the dev set
    folder = write_report(run, reports, latest=full)
    for lora in loras.values() if run.answers else []:
        record_in_run(lora, folder, run.records, settings.root)
    return run, folder


def cli_main(settings, *, endpoint: str | None = None, api_key: str | None = None, configs: str | None = None,
             judge_endpoint: str | None = None, judge_model: str | None = None, judge_api_key: str | None = None,
             limit: int | None = None, retrieval_only: bool = False, gate: bool = False, write_thresholds: bool = False,
             gold_set: str = "dev", quiet: bool = False, echo: Callable[[str], None] = print) -> int:
    """`ftatlas eval`: a run over the chosen sets, the retrieval gate (gate=True, both sets) or new gate thresholds;
    returns the exit code."""
    if write_thresholds:
        path = settings.path(settings.evals.thresholds)
        retrieval, metrics = gating.measure_sets(settings)
        data = gating.write_thresholds(metrics, path, retrieval=retrieval)
        echo(f"wrote {path}: dev {data['thresholds']}, heldout {data['heldout']['thresholds']}")
        return 0
    if gate:
        result = gating.run_gate(settings)
        echo(result.text())
        return 0 if result.passed else 1
    names = [c.strip() for c in configs.split(",") if c.strip()] if configs else None
    run, folder = run_eval(settings, endpoint=endpoint, api_key=api_key, configs=names, judge_endpoint=judge_endpoint,
                           judge_model=judge_model, judge_api_key=judge_api_key, limit=limit, retrieval_only=retrieval_only,
                           progress=not quiet, sets=gold_set)
    echo(table(set_rows(summarize(run.records, ("set", "config"))), ("config", "set", "n"), SHOWN))
    if run.status == "interrupted":
        echo(f"interrupted: partial report ({len(run.records)} question runs) in {folder}")
        return INTERRUPTED
    echo(f"report: {folder / 'report.md'}")
    return 0


__all__ = ["BASELINE", "Backend", "Config", "EvalError", "GateResult", "Question", "Run", "cli_main", "evaluate", "execute",
           "gate_metrics", "http", "in_process", "load_questions", "load_sets", "measure", "measure_sets", "run_eval",
           "run_gate", "write_report", "write_thresholds"]
