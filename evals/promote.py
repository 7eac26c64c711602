"""The gate before an adapter is served: the candidate against the current adapter on the dev and held-out sets."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

# metric -> +1 when higher is better, -1 when lower is better
GATED = {"fact_recall": 1, "citation_precision": 1, "refusal_accuracy": 1, "token_f1": 1, "language_match": 1,
         "false_refusal_rate": -1}
SETS = ("dev", "heldout")
TOLERANCE = 0.02


def decide(current: dict[str, dict], candidate: dict[str, dict], tolerance: float = TOLERANCE) -> dict:
    """Promote only when, on every set, no gated metric is worse than the current adapter's by more than `tolerance`.

    `current` and `candidate` map a set name to its summary row. A metric missing on either side fails the gate:
    nothing unmeasured is promoted. Example: dev fact_recall 0.60 -> 0.57 (-0.03) refuses; 0.60 -> 0.59 passes.
    """
    checks = []
    for name in SETS:
        cur, cand = current.get(name) or {}, candidate.get(name) or {}
        for metric, sign in GATED.items():
            a, b = cur.get(metric), cand.get(metric)
            ok = a is not None and b is not None and sign * (b - a) >= -tolerance - 1e-9
            checks.append({"set": name, "metric": metric, "current": a, "candidate": b,
                           "delta": None if a is None or b is None else round(b - a, 4), "ok": ok})
    promote = all(c["ok"] for c in checks)
    return {"promote": promote, "winner": "candidate" if promote else "current", "tolerance": tolerance,
            "failed": [f"{c['set']} {c['metric']}" for c in checks if not c["ok"]], "checks": checks}


def by_set(results: dict, config: str) -> dict[str, dict]:
    """The summary rows of one configuration per gold set. Example: results.json, 'atlas-rag' -> {'dev': {...}, ...}."""
    return {r["set"]: r for r in results["summary"]["by_set"] if r["config"] == config}


def markdown(decision: dict, candidate: str, current: str) -> str:
    lines = [f"# Adapter gate: {'promote' if decision['promote'] else 'keep the current adapter'}", "",
             f"- candidate: `{candidate}`", f"- current: `{current}`",
             f"- winner: **{decision['winner']}** (tolerance {decision['tolerance']})", "",
             "| set | metric | current | candidate | delta | ok |", "|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for c in decision["checks"]:
        lines.append(f"| {c['set']} | {c['metric']} | {fmt(c['current'])} | {fmt(c['candidate'])} | "
                     f"{fmt(c['delta'])} | {'yes' if c['ok'] else 'NO'} |")
    if decision["failed"]:
        lines += ["", "Failed: " + ", ".join(decision["failed"])]
    return "\n".join(lines) + "\n"


def side_by_side(settings, candidate: Path):
    """The settings that serve the current adapter and the candidate together: (settings, base, current model id,
    its folder, candidate model id). The candidate is the variant `<base>-candidate` of the same base."""
    from serve.bases import served_adapter
    from serve.errors import AdapterError
    from serve.promoted import base_of_adapter, serving_settings

    base = base_of_adapter(candidate)
    served = serving_settings(settings)
    found = served_adapter(served.llm, base)
    if found is None:
        raise AdapterError(f"no current adapter for base {base} to compare against (llm.adapters.{base})")
    llm = served.llm.model_copy(update={"adapters": {**served.llm.adapters, f"{base}-candidate": Path(candidate).resolve()}})
    return served.model_copy(update={"llm": llm}), base, found[0], found[1], f"atlas-rag-lora-{base}-candidate"


def gated_eval(settings, candidate: Path, out: Path, limit: int | None = None, progress: bool = True,
               echo: Callable[[str], None] = print) -> dict:
    """Evaluate the current adapter and the candidate in one eval run (same questions, engine settings and
    retrieval) on both sets; write gate.json and gate.md into `out` and return the decision."""
    from . import run_eval

    both, base, model, current, rival = side_by_side(settings, candidate)
    echo(f"gate: {settings.relative(settings.path(current))} ({model}) against {settings.relative(candidate)} ({rival})")
    t0 = time.monotonic()
    _, report = run_eval(both, configs=[model, rival], sets="all", limit=limit, progress=progress,
                         reports_dir=Path(out) / "reports")
    decision = _decision(settings, report, base, model, current, rival, candidate, limit)
    decision["eval_seconds"] = round(time.monotonic() - t0, 1)
    return _write(out, decision)


def gate_from_report(settings, candidate: Path, report: Path, rival: str, out: Path) -> dict:
    """The gate's decision from an eval run that already holds the current adapter and the candidate (served as
    `rival`) side by side on both whole sets; refused when the report measured other adapters or fewer questions."""
    from .errors import EvalError

    _, base, model, current, _ = side_by_side(settings, candidate)
    results = json.loads((Path(report) / "results.json").read_text(encoding="utf-8"))
    for name, folder in ((model, settings.path(current)), (rival, Path(candidate).resolve())):
        said = f"{name}: adapter {settings.relative(folder)}"  # evals/adapter_run.py's note, and its details
        if not any(n == said or n.startswith(said + " ") for n in results.get("notes", [])):
            raise EvalError(f"{report} did not measure {settings.relative(folder)} as {name}: its notes name other adapters")
    if results.get("status") != "complete" or set(results.get("sets", [])) != set(SETS):
        raise EvalError(f"{report} is not a complete run of both sets (dev and heldout)")
    return _write(out, _decision(settings, Path(report), base, model, current, rival, candidate, None))


def _decision(settings, report: Path, base, model, current, rival, candidate, limit) -> dict:
    results = json.loads((Path(report) / "results.json").read_text(encoding="utf-8"))
    decision = decide(by_set(results, model), by_set(results, rival))
    return decision | {"model": model, "candidate_model": rival, "base": base,
                       "current": settings.relative(settings.path(current)), "candidate": settings.relative(candidate),
                       "report": settings.relative(report), "limit": limit}


def _write(out: Path, decision: dict) -> dict:
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, text in (("gate.json", json.dumps(decision, indent=2, ensure_ascii=False)),
                       ("gate.md", markdown(decision, decision["candidate"], decision["current"]))):
        tmp = Path(out) / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, Path(out) / name)
    return decision
