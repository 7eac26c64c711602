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


def gated_eval(settings, candidate: Path, out: Path, limit: int | None = None, progress: bool = True,
               echo: Callable[[str], None] = print) -> dict:
    """Evaluate the current adapter and the candidate (same base, same questions, same engine settings) on both sets;
    write gate.json and gate.md into `out` and return the decision with both reports named."""
    from serve.bases import lora_models
    from serve.promoted import base_of_adapter, serving_settings

    from . import run_eval

    base = base_of_adapter(candidate)
    served = serving_settings(settings)
    found = {b: (name, folder) for name, (b, folder) in lora_models(served.llm).items()}
    if base not in found:
        from serve.errors import AdapterError

        raise AdapterError(f"no current adapter for base {base} to compare against (llm.adapters.{base})")
    model, current = found[base]
    rows, reports, t0 = {}, {}, time.monotonic()
    for side, folder in (("current", served.path(current)), ("candidate", Path(candidate).resolve())):
        llm = served.llm
        llm = (llm.model_copy(update={"adapter": folder}) if llm.adapter is not None and model == "atlas-rag-lora"
               else llm.model_copy(update={"adapters": {**llm.adapters, base: folder}}))
        echo(f"gate: {side} adapter {settings.relative(folder)} as {model}")
        run, folder_out = run_eval(served.model_copy(update={"llm": llm}), configs=[model], sets="all", limit=limit,
                                   progress=progress, reports_dir=Path(out) / side)
        results = json.loads((folder_out / "results.json").read_text(encoding="utf-8"))
        rows[side], reports[side] = by_set(results, model), settings.relative(folder_out)
    decision = decide(rows["current"], rows["candidate"])
    decision |= {"model": model, "base": base, "current": settings.relative(served.path(current)),
                 "candidate": settings.relative(candidate), "reports": reports, "limit": limit,
                 "eval_seconds": round(time.monotonic() - t0, 1)}
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, text in (("gate.json", json.dumps(decision, indent=2, ensure_ascii=False)),
                       ("gate.md", markdown(decision, decision["candidate"], decision["current"]))):
        tmp = Path(out) / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, Path(out) / name)
    return decision
