"""Self-critical runs side by side: ``python -m training.scst_report RUN... --out FIGURE``.

For each SCST run folder (its ``scst.json``): the train reward of the sampled captions and of
the greedy baseline per step (smoothed), and at each validation point the greedy captions'
CIDEr-D and the shares of captions with a dangling ending and with a repeated bigram. One
column per run, so learning rates or starting points compare at a glance.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.plots import save_figure
from training.scst import SCST_FILE

SMOOTHING = 25
"""Steps averaged in the reward curves (one step's 16 images are a noisy sample)."""


def _smooth(values: Sequence[float]) -> tuple[int, np.ndarray]:
    window = min(SMOOTHING, max(1, len(values)))
    return window, np.convolve(np.asarray(values, float), np.ones(window) / window, mode="valid")


def plot_runs(runs: Sequence[Path], out: Path) -> Path:
    """One column per run: rewards over steps (top), validation figures (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.5), squeeze=False)
    for column, run in enumerate(runs):
        saved: dict[str, Any] = json.loads((Path(run) / SCST_FILE).read_text())
        steps, validation = saved["steps"], saved["validation"]
        top, bottom = axes[0][column], axes[1][column]
        x = [row["step"] for row in steps]
        for key, label in (("sample_reward", "samples"), ("greedy_reward", "greedy")):
            window, curve = _smooth([row[key] for row in steps])
            top.plot(x[window - 1 :], curve, label=label)
        top.set_title(f"{Path(run).name} (lr {saved['config']['lr']:g})")
        top.set_xlabel("step")
        top.set_ylabel("train CIDEr-D")
        top.legend()
        top.grid(alpha=0.3)
        vx = [row["step"] for row in validation]
        bottom.plot(vx, [row["cider_d"] for row in validation], marker="o", label="val CIDEr-D")
        bottom.plot(vx, [row["dangling_end"] for row in validation], label="dangling ending")
        bottom.plot(vx, [row["repeated_bigram"] for row in validation], label="repeated bigram")
        bottom.set_xlabel("step")
        bottom.set_ylabel("greedy captions, validation")
        bottom.set_ylim(bottom=0)
        bottom.legend(fontsize="small")
        bottom.grid(alpha=0.3)
    return save_figure(fig, out, dpi=90)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.scst_report", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="SCST run folders (with scst.json)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    print(plot_runs(args.runs, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
