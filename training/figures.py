"""Model-card figures: ``python -m training.figures``.

* ``--captions captions.jsonl`` (written by ``python -m training evaluate``): a grid of 12 test
  images, picked evenly through the file (not chosen by quality), each with the generated caption
  and two of its reference captions.
* ``--runs RUN_DIR ...``: training and validation cross-entropy per epoch of each run, one line
  pair per run, the best epoch marked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.data import image_dir
from training.paths import default_data_dir


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, palette: bool = False) -> Path:
    """Write ``fig`` as a PNG atomically; ``palette``: 256 colours (much smaller for photos)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    if palette:
        from PIL import Image

        with Image.open(tmp) as img:
            img.convert("RGB").quantize(256).save(tmp, optimize=True)
    os.replace(tmp, path)
    return path


def pick_evenly(rows: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` rows spread evenly over ``rows`` (first included), in file order."""
    if count >= len(rows):
        return list(rows)
    step = len(rows) / count
    return [rows[int(i * step)] for i in range(count)]


def caption_grid(captions: Path, images: Path, out: Path, count: int = 12, cols: int = 4) -> Path:
    """A grid of ``count`` images with generated (bold) and two reference captions each."""
    from PIL import Image

    plt = _pyplot()
    lines = captions.read_text().splitlines()
    rows = pick_evenly([json.loads(line) for line in lines if line.strip()], count)
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 5.6 * nrows))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows, strict=False):
        with Image.open(images / row["image"]) as img:
            ax.imshow(img.convert("RGB"))
        gen = textwrap.fill(f"model: {row['caption']}", 46)
        refs = "\n".join(textwrap.fill(f"ref: {r}", 52) for r in row["references"][:2])
        ax.text(0, -0.03, gen, transform=ax.transAxes, fontsize=9, fontweight="bold", va="top")
        below = -0.05 - 0.055 * (gen.count("\n") + 1)
        ax.text(0, below, refs, transform=ax.transAxes, fontsize=8, va="top", color="#333333")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.98, bottom=0.08, wspace=0.08, hspace=0.5)
    path = _save(fig, out, palette=True)
    plt.close(fig)
    return path


def training_curves(runs: Sequence[Path], out: Path) -> Path:
    """Train (dashed) and validation (solid) cross-entropy per epoch for each run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        history = json.loads((run / "history.json").read_text())
        epochs = [row["epoch"] for row in history["epochs"]]
        (line,) = ax.plot(epochs, [row["val_ce"] for row in history["epochs"]], marker="o")
        line.set_label(f"{run.name} val (best {history['best_epoch']})")
        ax.plot(epochs, [row["ce"] for row in history["epochs"]], "--", color=line.get_color())
        best = history["best_epoch"]
        ax.plot([best], [history["best_val_ce"]], "k*", markersize=12)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per token (dashed: train, with dropout)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = _save(fig, out)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.figures", description=__doc__)
    parser.add_argument("--captions", type=Path, help="captions.jsonl of an evaluation")
    parser.add_argument("--grid-out", type=Path, default=Path("docs/figures/test_captions.png"))
    parser.add_argument("--count", type=int, default=12, help="images in the grid (default 12)")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="training run folders")
    parser.add_argument("--curves-out", type=Path, default=Path("docs/figures/training_curves.png"))
    parser.add_argument("--data-dir", type=Path, help="Flickr8k folder (default: the shared one)")
    args = parser.parse_args(argv)
    if args.captions is None and not args.runs:
        parser.error("give --captions, --runs or both")
    if args.captions is not None:
        images = image_dir(default_data_dir(args.data_dir))
        print(caption_grid(args.captions, images, args.grid_out, args.count))
    if args.runs:
        print(training_curves(args.runs, args.curves_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
