"""PNG plots for reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from headstart.files import atomic_path, read_jsonl

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def loss_curve(metrics_path: Path, out_png: Path, title: str) -> Path:
    """Training loss and validation loss against the optimizer step, from a run's metrics.jsonl."""
    train_x, train_y, val_x, val_y = [], [], [], []
    for record in read_jsonl(metrics_path):
        if record.get("split") == "val":
            val_x.append(record["step"])
            val_y.append(record["val_loss"])
        elif "loss" in record:
            train_x.append(record["step"])
            train_y.append(record["loss"])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(train_x, train_y, label="train loss", color="#4c72b0", linewidth=1.2)
    if val_x:
        ax.plot(val_x, val_y, "o-", label="validation loss", color="#dd8452", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out_png)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write the PNG under a temporary name and rename it: a crash leaves the previous plot."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
