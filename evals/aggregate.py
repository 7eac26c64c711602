"""Per-question records -> one row of mean scores per configuration (or per configuration and language, category...)."""

from __future__ import annotations

import statistics

from .metrics import mean
from .scoring import ANSWER_KEYS, RETRIEVAL_KEYS

JUDGE_KEYS = ("faithfulness", "answer_correctness")
LATENCY_KEYS = ("total_ms", "ttft_ms")
MODES = ("generated", "extractive", "refused")  # how a grounded answer came to be (serve/answer.py)
MODE_KEYS = tuple(f"{m}_share" for m in MODES)
SUMMARY_KEYS = (*RETRIEVAL_KEYS, *ANSWER_KEYS, "refusal_accuracy", "false_refusal_rate", *JUDGE_KEYS,
                "total_ms_p50", "ttft_ms_p50", *MODE_KEYS, "asked_again_share", "generated_ttft_share_p50")


def median(values) -> float | None:
    """Median of the values that are not None. Example: [30.0, None, 10.0, 20.0] -> 20.0."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize_group(records: list[dict]) -> dict:
    """Means of every metric over a group of records; refusal scores split by whether the question should be refused.

    Example: [{'refuse': True, 'metrics': {'refused': 1.0}}, {'refuse': False, 'metrics': {'refused': 1.0}}]
    -> {'refusal_accuracy': 1.0, 'false_refusal_rate': 1.0, 'n': 2, ...}.
    """
    ok = [r for r in records if not r.get("error")]
    row: dict = {"n": len(records), "errors": len(records) - len(ok)}
    for key in (*RETRIEVAL_KEYS, *ANSWER_KEYS, *JUDGE_KEYS):
        row[key] = mean(r["metrics"].get(key) for r in ok)
    row["refusal_accuracy"] = mean(r["metrics"].get("refused") for r in ok if r["refuse"])
    row["false_refusal_rate"] = mean(r["metrics"].get("refused") for r in ok if not r["refuse"])
    for key in LATENCY_KEYS:
        row[f"{key}_p50"] = median(r.get("latency", {}).get(key) for r in ok)
    row.update(mode_shares(ok))
    return row


def mode_shares(records: list[dict]) -> dict:
    """Shares of the answerable questions' answers the model wrote, quoted from the passages, or refused; and for the
    written ones, the median share of the total time spent before the first token. None without grounded answers.

    Example: answerable records with modes generated, extractive, extractive, refused ->
    {'generated_share': 0.25, 'extractive_share': 0.5, 'refused_share': 0.25, 'asked_again_share': ...,
    'generated_ttft_share_p50': ...}.
    """
    grounded = [r for r in records if not r["refuse"] and (r.get("grounding") or {}).get("mode")]
    out: dict = {key: mean(float(r["grounding"]["mode"] == m) for r in grounded) for key, m in zip(MODE_KEYS, MODES)}
    # the model declined, retrieval was confident, and it was asked once more without the way out (serve/answer.py)
    out["asked_again_share"] = mean(float(bool(r["grounding"].get("asked_again"))) for r in grounded)
    generated = [r.get("latency") or {} for r in grounded if r["grounding"]["mode"] == "generated"]
    out["generated_ttft_share_p50"] = median(t["ttft_ms"] / t["total_ms"] for t in generated
                                             if t.get("ttft_ms") is not None and t.get("total_ms"))
    return out


def summarize(records: list[dict], by: tuple[str, ...] = ("config",)) -> list[dict]:
    """One row per distinct value of the `by` fields, in first-seen order.

    Example: records of configs a, b, a -> [{'config': 'a', 'n': 2, ...}, {'config': 'b', 'n': 1, ...}].
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    return [{**dict(zip(by, key, strict=True)), **summarize_group(rs)} for key, rs in groups.items()]
