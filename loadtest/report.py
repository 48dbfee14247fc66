"""Results as JSON and as a PNG: throughput and p50/p95/p99 latency against offered load."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.stats import StepStats


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _x(stats: StepStats) -> float:
    return stats.offered_rate or stats.throughput


def plot_steps(
    series: dict[str, Sequence[StepStats]], path: Path, *, title: str = "captioner load"
) -> Path:
    """One PNG, two panels: throughput vs offered (with the y = x line) and latency vs offered.

    ``series`` maps a label (e.g. ``batching``, ``max_batch_size=1``) to its steps.
    Closed-loop steps have no offered rate; they are placed at their achieved throughput.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 4.8))
    top = 1.0
    styles = {"p50": ":", "p95": "--", "p99": "-"}
    for i, (label, steps) in enumerate(series.items()):
        if not steps:
            continue
        color = f"C{i}"
        xs = [_x(s) for s in steps]
        top = max(top, *xs, *(s.throughput for s in steps))
        ax_t.plot(xs, [s.throughput for s in steps], "o-", color=color, label=label)
        for q, style in styles.items():
            ys = [s.latency_ms.get(q, math.nan) for s in steps]
            ax_l.plot(xs, ys, style, marker=".", color=color, label=f"{label} {q}")
    ax_t.plot([0, top], [0, top], color="grey", lw=0.8, ls="--", label="throughput = offered")
    ax_t.set(xlabel="offered load (requests/s)", ylabel="achieved throughput (captions/s)")
    ax_t.set_title("throughput")
    ax_l.set(
        xlabel="offered load (requests/s)",
        ylabel="latency from scheduled send (ms)",
        yscale="log",
    )
    ax_l.set_title("latency p50 / p95 / p99")
    for ax in (ax_t, ax_l):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
