"""Figures and serving cost for the attention decoder (model card); ONNX Runtime only.

    python -m training.attention_report figures --bundle models/default --out docs
    python -m training.attention_report bench --bundle models/default models/merge

``figures`` writes ``attention-maps.png`` (test images, each generated word with the image dimmed
except where the decoder attended, beam 3) and ``feature-pca.png`` (the encoder's pooled
features of the test images projected on their first two principal components, coloured by a
keyword most of the image's reference captions share). ``bench`` measures captions per second
of ``service.model.CaptionModel`` (the served path: encode + batched decode) at a batch size,
greedy and beam 3, on real test images, and prints a JSON table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from service.imaging import load_rgb, resize_rgb
from service.model import CaptionModel
from training.data import image_dir, load_captions, load_split
from training.paths import default_data_dir

KEYWORDS: dict[str, str] = {
    "dog": r"\b(dog|dogs|puppy)\b",
    "child": r"\b(child|children|boy|boys|girl|girls|kid|kids)\b",
    "water": r"\b(water|pool|ocean|lake|river|beach|wave|waves|swimming)\b",
    "snow": r"\b(snow|snowy|ski|skier|snowboarder)\b",
    "bike": r"\b(bike|bicycle|biker|bmx|cyclist)\b",
}
"""Caption keyword -> pattern; an image takes the first keyword that 3 of its 5 references use."""


def _images(model: CaptionModel, paths: Sequence[Path]) -> np.ndarray:
    return np.stack([model.preprocess(p.read_bytes()) for p in paths])


def keyword_of(references: Sequence[str]) -> str | None:
    for word, pattern in KEYWORDS.items():
        if sum(bool(re.search(pattern, text.lower())) for text in references) >= 3:
            return word
    return None


def attention_figure(
    model: CaptionModel, paths: Sequence[Path], out: Path, max_words: int = 9
) -> Path:
    """One row per image: the image, then each word (the first ``max_words``) of its beam-3
    caption over its map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captions = model.caption_images(
        _images(model, paths), [model.request(beam_size=3)] * len(paths)
    )
    grid = model.manifest.encoder.grid_size or 49
    side = int(round(grid**0.5))
    columns = 1 + min(max_words, max(len(c[0].text.split()) for c in captions))
    fig, axes = plt.subplots(len(paths), columns, figsize=(1.7 * columns, 1.9 * len(paths)))
    axes = np.atleast_2d(axes)
    for row, (path, caps) in enumerate(zip(paths, captions, strict=True)):
        best = caps[0]
        rgb = resize_rgb(load_rgb(path.read_bytes()), model.preprocessing).astype(np.float32)
        words = best.text.split()
        rows = [r for t, r in zip(best.tokens, best.attention or [], strict=False) if t >= 4]
        axes[row, 0].imshow(rgb.astype(np.uint8))
        axes[row, 0].set_title(path.name[:14], fontsize=7)
        for col in range(1, columns):
            ax = axes[row, col]
            ax.axis("off")
            if col - 1 >= len(words):
                continue
            weights = np.asarray(rows[col - 1], dtype=np.float32).reshape(side, side)
            small = Image.fromarray((255 * weights / weights.max()).astype(np.uint8))
            size = (rgb.shape[1], rgb.shape[0])
            light = np.asarray(small.resize(size, Image.Resampling.BICUBIC), np.float32)
            shown = rgb * (0.25 + 0.75 * light[..., None] / 255.0)
            ax.imshow(np.clip(shown, 0, 255).astype(np.uint8))
            ax.set_title(words[col - 1], fontsize=9)
        axes[row, 0].axis("off")
    fig.suptitle("Where the attention decoder looked, word by word (beam 3, test images)")
    fig.tight_layout()
    fig.savefig(out, dpi=72)
    plt.close(fig)
    with Image.open(out) as drawn:  # 256-colour palette: smaller file, same look
        drawn.convert("RGB").quantize(colors=256).save(out, optimize=True)
    return out


def pca_figure(model: CaptionModel, data_dir: Path, out: Path, limit: int = 1000) -> Path:
    """Pooled test-image features on their first two principal components, by keyword."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = load_split(data_dir, "test")[:limit]
    references = load_captions(data_dir)
    folder = image_dir(data_dir)
    pooled = []
    for start in tqdm(range(0, len(names), 32), desc="pooled features", unit="batch"):
        batch = _images(model, [folder / n for n in names[start : start + 32]])
        pooled.append(model.encode(batch)["pooled"])
    features = np.concatenate(pooled).astype(np.float64)
    centred = features - features.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    explained = singular[:2] ** 2 / np.sum(singular**2)
    labels = [keyword_of(references[n]) for n in names]

    fig, ax = plt.subplots(figsize=(7, 6))
    other = np.array([label is None for label in labels])
    ax.scatter(xy[other, 0], xy[other, 1], s=6, c="#c8c8c8", label="none of these")
    for word in KEYWORDS:
        mask = np.array([label == word for label in labels])
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=10, label=f"{word} ({mask.sum()})")
    ax.set_xlabel(f"PC 1 ({explained[0]:.1%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.1%} of variance)")
    ax.set_title(f"EfficientNet-Lite0 pooled features, {len(names)} test images, PCA")
    ax.legend(title="3 of 5 references mention", fontsize=8, markerscale=2)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def bench(
    bundles: Sequence[Path], paths: Sequence[Path], batch: int, rounds: int
) -> list[dict[str, Any]]:
    """Captions per second through ``CaptionModel.caption_images`` (encode + decode), median of
    ``rounds`` batches; the bundles take turns round by round, so that other load on the machine
    falls on all of them alike."""
    models = [CaptionModel.load(b, intra_op_threads=2) for b in bundles]
    images = [_images(m, paths[:batch]) for m in models]
    times: dict[tuple[int, int], list[float]] = {}
    for beam in (1, 3):
        for i, model in enumerate(models):  # warm-up
            model.caption_images(images[i], [model.request(beam_size=beam)] * len(images[i]))
        for _ in tqdm(range(rounds), desc=f"beam {beam}", unit="round"):
            for i, model in enumerate(models):
                requests = [model.request(beam_size=beam)] * len(images[i])
                start = time.perf_counter()
                model.caption_images(images[i], requests)
                times.setdefault((i, beam), []).append(time.perf_counter() - start)
    table = []
    for i, (bundle, model) in enumerate(zip(bundles, models, strict=True)):
        row: dict[str, Any] = {
            "bundle": str(bundle),
            "architecture": model.manifest.decoder.architecture,
        }
        for beam in (1, 3):
            median = float(np.median(times[(i, beam)]))
            row[f"beam_{beam}"] = {
                "captions_per_s": round(len(images[i]) / median, 1),
                "batch_ms": round(1000 * median, 1),
            }
        table.append(row)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.attention_report", description=__doc__
    )
    commands = parser.add_subparsers(dest="command", required=True)
    figures = commands.add_parser("figures", help="attention maps and feature PCA as PNGs")
    figures.add_argument("--bundle", type=Path, required=True, help="attention model bundle")
    figures.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs")
    figures.add_argument("--images", type=int, default=4, help="test images in the maps figure")
    figures.add_argument("--first", type=int, default=0, help="index of the first test image")
    figures.add_argument("--pca-images", type=int, default=1000, help="test images in the PCA")
    costs = commands.add_parser("bench", help="captions/s of bundles, greedy and beam 3")
    costs.add_argument("--bundle", type=Path, nargs="+", required=True)
    costs.add_argument("--batch-size", type=int, default=16)
    costs.add_argument("--rounds", type=int, default=5, help="timed batches; the median counts")
    for sub in (figures, costs):
        sub.add_argument("--data-dir", type=Path, default=None, help="Flickr8k folder")
    args = parser.parse_args(argv)

    data_dir = default_data_dir(args.data_dir)
    names = load_split(data_dir, "test")
    folder = image_dir(data_dir)
    if args.command == "figures":
        model = CaptionModel.load(args.bundle, intra_op_threads=2)
        if model.manifest.decoder.attention_output is None:
            print(f"error: {args.bundle} has no attention decoder", file=sys.stderr)
            return 2
        args.out.mkdir(parents=True, exist_ok=True)
        chosen = [folder / n for n in names[args.first : args.first + args.images]]
        print(attention_figure(model, chosen, args.out / "attention-maps.png"))
        print(pca_figure(model, data_dir, args.out / "feature-pca.png", args.pca_images))
        return 0
    paths = [folder / n for n in names[: args.batch_size]]
    table = bench(args.bundle, paths, args.batch_size, args.rounds)
    print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
