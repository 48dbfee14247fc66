"""Loss curves of a run as a PNG (matplotlib, headless Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_history(
    history: Sequence[Mapping[str, Any]], path: Path, label_smoothing: float = 0.0
) -> Path:
    """Train and validation cross-entropy per epoch (left; plus the smoothed training loss when
    label smoothing is on) and the learning rate (right); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (
        ("ce", "train CE", "-"),
        ("val_ce", "val CE", "-"),
        ("loss", "train loss (with label smoothing)", "--"),
        ("val_loss", "val loss (with label smoothing)", "--"),
    ):
        values = [row.get(key) for row in history]
        if key.endswith("loss") and not label_smoothing:
            continue  # without label smoothing the loss is the cross-entropy
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, marker="o", linestyle=style, label=label)
    best = min(history, key=lambda row: row.get("val_ce", row.get("val_loss", float("inf"))))
    ax_loss.axvline(best["epoch"], color="grey", linestyle=":", label=f"best epoch {best['epoch']}")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("masked cross-entropy per token")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(epochs, [row.get("lr") for row in history], marker="o")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_yscale("log")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
