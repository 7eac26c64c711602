"""A run's curves as PNGs: SFT train and validation loss, DPO reward margins, per logged optimizer step."""

from __future__ import annotations

from pathlib import Path


def loss_points(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric. Example: [{'step': 1, 'loss': 2.0}, {'step': 2, 'eval_loss': 1.5}], 'loss' -> ([1], [2.0])."""
    rows = [(int(r["step"]), float(r[key])) for r in log_history if key in r and "step" in r]
    return [s for s, _ in rows], [v for _, v in rows]


def plot_loss(log_history: list[dict], path: Path, title: str = "") -> Path:
    return plot_lines(log_history, (("loss", "train", "-"), ("eval_loss", "validation", "o--")), path,
                      "loss (answer tokens)", title or "LoRA fine-tuning loss")


def plot_lines(log_history: list[dict], lines: tuple, path: Path, ylabel: str, title: str) -> Path:
    """One PNG of logged metrics over optimizer steps; `lines` holds (key, label, matplotlib style) triples."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label, style in lines:
        steps, values = loss_points(log_history, key)
        if steps:
            ax.plot(steps, values, style, label=label)
    if any(key.startswith("rewards/") for key, _, _ in lines):  # a reward's sign matters: mark zero
        ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
