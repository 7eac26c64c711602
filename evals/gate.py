"""The CI gate: the configured retrieval's per-language metrics on the dev and heldout sets against committed
thresholds; no LLM, no server."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .backends import in_process
from .configs import Config
from .errors import EvalError
from .gold import SETS, load_questions, set_paths
from .metrics import mean
from .runner import evaluate

GATE_KEYS = ("context_fact_recall@5", "hit@5", "mrr")


def gate_metrics(records: list[dict], config: str | None = None) -> dict[str, dict[str, float]]:
    """Per-language means of the gate metrics over answerable questions (of one configuration when named).

    Example: [{'config': 'atlas-rag', 'language': 'en', 'refuse': False, 'metrics': {'hit@5': 1.0, 'mrr': 0.5,
    'context_fact_recall@5': 1.0}}] -> {'en': {'context_fact_recall@5': 1.0, 'hit@5': 1.0, 'mrr': 0.5}}.
    """
    picked = [r for r in records if not r["refuse"] and not r.get("error") and (config is None or r["config"] == config)]
    out: dict[str, dict[str, float]] = {}
    for lang in sorted({r["language"] for r in picked}):
        rs = [r for r in picked if r["language"] == lang]
        out[lang] = {k: mean(r["metrics"].get(k) for r in rs) for k in GATE_KEYS}
    return out


def thresholds_from(metrics: dict[str, dict[str, float]], margin: float = 0.02) -> dict[str, dict[str, float]]:
    """Each measured value minus the margin, rounded up to 3 decimals so no threshold sits further below than the margin.

    Example: {'en': {'hit@5': 0.9123}} -> {'en': {'hit@5': 0.893}}.
    """
    return {lang: {k: max(0.0, math.ceil(round((v - margin) * 1000, 6)) / 1000) for k, v in ms.items()}
            for lang, ms in metrics.items()}


def write_thresholds(metrics: dict[str, dict[str, dict[str, float]]], path: Path, margin: float = 0.02,
                     retrieval: dict | None = None) -> dict:
    """Write the thresholds file the gate reads, from {set: {language: {metric: value}}}: the dev set at the top level
    (measured values kept beside the thresholds for review), each other set in a section of its own name.

    Example: {'dev': {'en': {'mrr': 0.9}}, 'heldout': {'en': {'mrr': 0.8}}} -> {'margin': 0.02, 'retrieval': {},
    'measured': {'en': {'mrr': 0.9}}, 'thresholds': {'en': {'mrr': 0.88}}, 'heldout': {'measured': …, 'thresholds':
    {'en': {'mrr': 0.78}}}}.
    """
    missing = [name for name in SETS if name not in metrics]
    if missing:
        raise EvalError(f"gate thresholds need every question set; missing {missing}")
    sections = {name: {"measured": metrics[name], "thresholds": thresholds_from(metrics[name], margin)} for name in SETS}
    data = {"margin": margin, "retrieval": retrieval or {}, **sections.pop("dev"), **sections}
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


def load_thresholds(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """The committed thresholds per set: {'dev': {language: {metric: min}}, 'heldout': {...}}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise EvalError(f"no gate thresholds at {path}; measure them with `ftatlas eval --write-thresholds`") from e
    except (OSError, ValueError) as e:
        raise EvalError(f"the gate thresholds {path} are not readable: {e}") from e
    out = {}
    for name in SETS:
        section = (data if name == "dev" else data.get(name)) if isinstance(data, dict) else None
        thresholds = section.get("thresholds") if isinstance(section, dict) else None
        if not isinstance(thresholds, dict):
            raise EvalError(f"the gate thresholds {path} have no {name} thresholds; measure them with "
                            "`ftatlas eval --write-thresholds`")
        out[name] = thresholds
    return out


def regressions(metrics: dict[str, dict[str, float]], thresholds: dict[str, dict[str, float]]) -> list[str]:
    """Every metric below its threshold (a missing one counts as 0).

    Example: ({'ru': {'mrr': 0.6}}, {'ru': {'mrr': 0.7}}) -> ['ru mrr 0.600 < 0.700'].
    """
    out = []
    for lang, ths in thresholds.items():
        for key, th in ths.items():
            got = metrics.get(lang, {}).get(key) or 0.0
            if got < th - 1e-9:
                out.append(f"{lang} {key} {got:.3f} < {th:.3f}")
    return out


@dataclass
class GateResult:
    retrieval: dict
    metrics: dict[str, dict[str, dict[str, float]]]  # {set: {language: {metric: value}}}
    thresholds: dict[str, dict[str, dict[str, float]]]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def text(self) -> str:
        lines = [f"retrieval gate ({self.retrieval['mode']}{', rerank' if self.retrieval['rerank'] else ''}):"]
        for name, by_lang in self.metrics.items():
            for lang, ms in by_lang.items():
                mins = self.thresholds.get(name, {}).get(lang, {})
                cells = ", ".join(f"{k} {v:.3f} (min {mins.get(k, 0.0):.3f})" for k, v in ms.items())
                lines.append(f"  {name} {lang}: {cells}")
        lines += [f"  REGRESSION: {f}" for f in self.failures] or ["  passed"]
        return "\n".join(lines)


def measure(settings, embedder=None, questions_path: Path | None = None) -> tuple[dict, dict[str, dict[str, float]]]:
    """The configured retrieval (settings.retrieval) over the answerable questions of one gold file (default: the dev
    set) -> (retrieval, metrics per language)."""
    questions = [q for q in load_questions(questions_path or settings.path(settings.evals.questions)) if not q.refuse]
    retrieval = {"mode": settings.retrieval.mode, "rerank": settings.retrieval.rerank}
    backend = in_process(settings, embedder, answers=False)
    cfg = Config("gate", "", retrieval)
    records = [evaluate(q, cfg, backend, answers=False) for q in questions]
    failed = [r for r in records if r["error"]]
    if failed:
        raise EvalError(f"retrieval failed for {len(failed)} questions, first: {failed[0]['id']}: {failed[0]['error']}")
    return retrieval, gate_metrics(records)


def measure_sets(settings, embedder=None) -> tuple[dict, dict[str, dict[str, dict[str, float]]]]:
    """measure() on every question set -> (retrieval, {set: metrics per language})."""
    if embedder is None:
        from ingest.embedder import Embedder

        # one embedder for both sets: the model loads once
        embedder = Embedder(settings.ingest.embed_model, settings.ingest.device, settings.ingest.embed_batch_size)
    out = {}
    for name, path in set_paths(settings, "all").items():
        retrieval, out[name] = measure(settings, embedder, path)
    return retrieval, out


def compare(retrieval: dict, metrics: dict, thresholds: dict) -> GateResult:
    """Measured {set: per-language metrics} against {set: thresholds}; each failure names its set.

    Example: metrics {'dev': {'ru': {'mrr': 0.8}}, 'heldout': {'ru': {'mrr': 0.6}}}, every threshold 0.7 -> failures
    ['heldout ru mrr 0.600 < 0.700'].
    """
    failures = [f"{name} {f}" for name in SETS for f in regressions(metrics.get(name, {}), thresholds[name])]
    return GateResult(retrieval, metrics, thresholds, failures)


def run_gate(settings, thresholds_path: Path | None = None, embedder=None) -> GateResult:
    """Measure the configured retrieval on both sets and compare it with the committed thresholds."""
    thresholds = load_thresholds(thresholds_path or settings.path(settings.evals.thresholds))
    return compare(*measure_sets(settings, embedder), thresholds)
