"""How evenly trained attention decoders spread their attention over the image grid.

    python -m training.coverage --run-dir runs/model/attention runs/model/attention-s7

For each run, on its validation captions (teacher forcing, the run's best weights): the
cross-entropy per word, and Show, Attend and Tell's doubly stochastic penalty at weight 1
(``training.attention.AttentionCoverage``: per caption, the squared gaps between the attention
each of the N grid cells received over the caption and an even share ``len / N``, summed over
the cells; then the mean over captions). 0 means every caption spread its attention evenly over
the grid; training with ``--coverage`` pulls a decoder towards 0. Prints a JSON list.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from training.model import BEST_WEIGHTS_FILE, CONFIG_FILE


def measure(run_dir: Path, data_dir: Path | None = None) -> dict[str, float | str]:
    """``{"run", "val_ce", "penalty"}`` for one finished attention run."""
    import keras

    from training.attention import AttentionConfig, build_training_model
    from training.train import MaskedCrossEntropy, TrainConfig, make_dataset, prepare, token_ce

    config = json.loads((run_dir / CONFIG_FILE).read_text())
    if config.get("decoder") != "attention":
        raise ValueError(f"{run_dir} is not an attention run (decoder={config.get('decoder')!r})")
    cfg = TrainConfig.from_saved(config)
    if data_dir is not None:
        cfg.data_dir = str(data_dir)
    with tempfile.TemporaryDirectory() as scratch:  # prepare() writes a vocabulary
        data = prepare(cfg, Path(scratch))
    val = make_dataset(data.features, data.val, cfg.batch_size, range(1), None)

    def scored(weight: float) -> dict[str, float]:
        model = build_training_model(
            AttentionConfig.from_dict({**config["model"], "coverage": weight})
        )
        model.load_weights(run_dir / BEST_WEIGHTS_FILE)
        model.compile(
            loss=MaskedCrossEntropy(0.0),
            weighted_metrics=[keras.metrics.MeanMetricWrapper(token_ce, name="ce")],
        )
        return {k: float(v) for k, v in model.evaluate(val, verbose=0, return_dict=True).items()}

    # same weights scored with and without the penalty: the loss difference is the penalty alone
    # (the loss averages batches, the ce metric words, so loss - ce would not be)
    plain, penalised = scored(0.0), scored(1.0)
    return {
        "run": str(run_dir),
        "val_ce": plain["ce"],
        "penalty": penalised["loss"] - plain["loss"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.coverage", description=__doc__)
    parser.add_argument("--run-dir", type=Path, nargs="+", required=True, help="attention runs")
    parser.add_argument("--data-dir", type=Path, default=None, help="Flickr8k folder")
    args = parser.parse_args(argv)
    rows = []
    for run_dir in args.run_dir:
        try:
            rows.append(measure(run_dir, args.data_dir))
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
