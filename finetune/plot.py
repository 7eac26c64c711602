"""The loss curve of a run as a PNG (train loss per logged step, validation loss where evaluated)."""

from __future__ import annotations

from pathlib import Path


def loss_points(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric. Example: [{'step': 1, 'loss': 2.0}, {'step': 2, 'eval_loss': 1.5}], 'loss' -> ([1], [2.0])."""
    rows = [(int(r["step"]), float(r[key])) for r in log_history if key in r and "step" in r]
    return [s for s, _ in rows], [v for _, v in rows]


def plot_loss(log_history: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label, style in (("loss", "train", "-"), ("eval_loss", "validation", "o--")):
        steps, values = loss_points(log_history, key)
        if steps:
            ax.plot(steps, values, style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(title or "LoRA fine-tuning loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
