"""PNG bar charts of the main metrics by configuration (matplotlib's Agg canvas, no display needed)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CHARTS = {
    "retrieval.png": ("Retrieval against gold documents", ("hit@5", "mrr", "ndcg@10", "context_fact_recall@5"), (0, 1)),
    "answers.png": ("Answer quality", ("fact_recall", "token_f1", "rouge_l", "embed_sim", "citation_precision",
                                       "citation_validity", "refusal_accuracy", "false_refusal_rate", "language_match",
                                       "faithfulness", "answer_correctness"), (0, 1)),
    "latency.png": ("Latency per question (median, ms)", ("total_ms_p50", "ttft_ms_p50"), None),
}


def bar_chart(rows: list[dict], keys: tuple[str, ...], title: str, path: Path, ylim=None) -> bool:
    """Grouped bars: one group per metric, one bar per configuration; False (nothing written) when no row has data."""
    keys = tuple(k for k in keys if any(r.get(k) is not None for r in rows))
    rows = [r for r in rows if any(r.get(k) is not None for k in keys)]
    if not keys or not rows:
        return False
    fig = Figure(figsize=(max(6.0, 1.3 * len(keys) + 2), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, [r.get(k) or 0.0 for k in keys], width, label=r["config"])
    ax.set_xticks(range(len(keys)), [k.replace("_", " ") for k in keys], rotation=20, ha="right", fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(4, len(rows)), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    fig.savefig(path)
    return True


def write_charts(rows: list[dict], folder: Path) -> list[str]:
    """Every chart that has data, written into folder; returns the file names written."""
    return [name for name, (title, keys, ylim) in CHARTS.items() if bar_chart(rows, keys, title, Path(folder) / name, ylim)]
