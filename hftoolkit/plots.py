"""PNG plots written into the run directory: the loss curve and the confusion matrix (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    return plt


def loss_curve_png(metrics_jsonl: Path, out: Path) -> bool:
    """Train loss (and eval loss when present) against the optimizer step. False when there is nothing to plot."""
    train, evals = [], []
    if not metrics_jsonl.is_file():
        return False
    for line in metrics_jsonl.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec and "step" in rec:
            train.append((rec["step"], rec["loss"]))
        if "eval_loss" in rec and "step" in rec:
            evals.append((rec["step"], rec["eval_loss"]))
    if not train and not evals:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})  # no version/date stamp: same data, same bytes
    plt.close(fig)
    return True


def confusion_matrix_png(out: Path, predictions: Sequence[int], references: Sequence[int], labels: list[str]) -> None:
    n = len(labels) or (max([*predictions, *references], default=0) + 1)
    counts = [[0] * n for _ in range(n)]
    for p, r in zip(predictions, references):
        counts[int(r)][int(p)] += 1
    plt = _pyplot()
    size = max(4, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(counts, cmap="Blues")
    names = labels or [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in counts) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, counts[i][j], ha="center", va="center", color="white" if counts[i][j] > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
