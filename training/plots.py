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
    return save_figure(fig, Path(path))


def plot_scst(
    steps: Sequence[Mapping[str, Any]], validation: Sequence[Mapping[str, Any]], path: Path
) -> Path:
    """Self-critical training: the train reward of samples and of the greedy baseline per step
    (left, smoothed over 25 steps), and the validation CIDEr-D and repetition figures at each
    evaluation point (right); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_reward, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    x = [row["step"] for row in steps]
    for key, label in (("sample_reward", "sampled captions"), ("greedy_reward", "greedy baseline")):
        values = np.asarray([row[key] for row in steps], dtype=float)
        window = min(25, max(1, len(values)))
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax_reward.plot(x[window - 1 :], smooth, label=label)
    ax_reward.set_xlabel("step")
    ax_reward.set_ylabel(f"train CIDEr-D (mean of {min(25, max(1, len(steps)))} steps)")
    ax_reward.legend()
    ax_reward.grid(alpha=0.3)
    vx = [row["step"] for row in validation]
    ax_val.plot(vx, [row["cider_d"] for row in validation], marker="o", label="val CIDEr-D")
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("val CIDEr-D (greedy)")
    ax_val.grid(alpha=0.3)
    ax_share = ax_val.twinx()
    for key, label, style in (
        ("repeated_bigram", "repeated bigram", "--"),
        ("dangling_end", "dangling ending", ":"),
    ):
        ax_share.plot(vx, [row.get(key) for row in validation], linestyle=style, label=label)
    ax_share.set_ylabel("share of captions")
    lines = ax_val.get_legend_handles_labels()
    shares = ax_share.get_legend_handles_labels()
    ax_val.legend(lines[0] + shares[0], lines[1] + shares[1], loc="lower right")
    return save_figure(fig, Path(path))


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` atomically and release it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path
