"""``python -m export``: training run(s) -> checked model bundle (see ``export.bundle``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.manifest import BundleError
from service.model import ProviderUnavailable

from .bundle import BundleExistsError, ExportOptions, record_metrics, write_bundle
from .onnx_export import DEFAULT_OPSET, ExportError
from .parity import DEFAULT_FEATURE_TOLERANCE, DEFAULT_LOGPROB_TOLERANCE, ParityError

log = logging.getLogger("export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description=(
            "Export a training run (Keras encoder + merge or attention decoder), or several runs "
            "as one ensemble, to an ONNX model bundle: manifest.json, encoder.onnx, decoder.onnx, "
            "vocab.json, decoder.keras.weights.h5. "
            "The export checks ONNX Runtime against Keras on real images and fails (writing "
            "nothing) when they disagree."
        ),
    )
    arg = parser.add_argument
    arg(
        "--run-dir",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="training run folder (config.json, ...); several runs (all merge or all attention "
        "decoders) export one ensemble decoder averaging their probabilities (export.ensemble)",
    )
    arg("--out", type=Path, required=True, help="bundle folder to create, e.g. models/default")
    arg("--name", help="model name in the manifest (default: the --out folder name)")
    arg("--version", default="1.0.0", help="model version in the manifest (default: 1.0.0)")
    arg(
        "--data-dir",
        type=Path,
        help="Flickr8k folder for the parity, calibration and evaluation images "
        "(default: $CAPTION_DATA_DIR or ../shared/data/flickr8k)",
    )
    arg("--force", action="store_true", help="replace an existing bundle at --out")
    arg(
        "--quantize",
        choices=["int8"],
        help="also write encoder.int8.onnx (static QDQ int8, calibrated on real train images) "
        "and record its speed-up and caption agreement in the manifest",
    )
    arg(
        "--evaluate",
        action="store_true",
        help="after writing, score the bundle and store the metrics in manifest.json: the test "
        "split with beam search (metrics.test) and greedy (metrics.test_greedy), the validation "
        "images (metrics.val), and with --quantize the int8 encoder (metrics.test_int8)",
    )
    arg("--eval-beam-size", type=int, default=3, help="beam size for --evaluate (default: 3)")
    arg("--eval-limit", type=int, help="evaluate on the first N test images only (default: all)")
    arg(
        "--eval-out",
        type=Path,
        help="keep --evaluate's captions.jsonl and summary.json in this folder "
        "(default: a temporary folder, deleted)",
    )
    arg(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        choices=range(13, 19),
        metavar="{13..18}",
        help=f"ONNX opset for both graphs (default: {DEFAULT_OPSET})",
    )
    arg("--parity-images", type=int, default=8, help="real images for the parity check (def.: 8)")
    arg(
        "--feature-tolerance",
        type=float,
        default=DEFAULT_FEATURE_TOLERANCE,
        help=f"max |ONNX - Keras| on encoder features (default: {DEFAULT_FEATURE_TOLERANCE:g})",
    )
    arg(
        "--logprob-tolerance",
        type=float,
        default=DEFAULT_LOGPROB_TOLERANCE,
        help=f"max |ONNX - Keras| on decoder log-probs (default: {DEFAULT_LOGPROB_TOLERANCE:g})",
    )
    arg(
        "--calibration-images",
        type=int,
        default=200,
        help="train images used to calibrate --quantize int8 (default: 200)",
    )
    arg(
        "--agreement-images",
        type=int,
        default=100,
        help="validation images on which int8 and fp32 captions are compared (default: 100)",
    )
    arg(
        "--no-keras-weights",
        action="store_true",
        help="leave decoder.keras.weights.h5 out of the bundle (smaller; the naive benchmark "
        "baseline then reads the run's best.weights.h5 when the run folder is at hand)",
    )
    arg(
        "--decoder-weights",
        choices=["float32", "float16"],
        default="float32",
        help="float16: round the step decoder's weights to float16 and store them so, half the "
        "file, still computed in float32 (export.compact; default: float32)",
    )
    return parser


def evaluate(
    bundle: Path,
    data_dir: Path,
    beam_size: int,
    limit: int | None,
    out: Path | None = None,
    *,
    int8: bool = False,
    split: str = "test",
) -> dict[str, Any]:
    """Score ``bundle`` (its int8 encoder with ``int8``) on ``split``; keep its captions and
    summary in ``out`` when given; return the manifest's record of it. Greedy (``beam_size``
    1) ranks by raw log-probability (length penalty 0).

    The record holds split, metrics, BLEU-4 bootstrap interval, counts and settings, without
    the machine-specific data folder and timings, so it describes the bundle, not the machine.
    """
    from training.evaluate import EvalOptions
    from training.evaluate import evaluate as evaluate_bundle

    options = EvalOptions(
        bundle=bundle,
        split=split,
        data_dir=data_dir,
        beam_size=beam_size,
        length_penalty=0.7 if beam_size > 1 else 0.0,
        limit=limit,
        int8=int8,
    )
    result = evaluate_bundle(options)
    if out is not None:
        result.write(out)
    summary = result.summary()  # the JSON form summary.json holds
    del summary["settings"]["data_dir"]
    return {
        k: summary[k] for k in ("split", "metrics", "bleu_4_ci", "counts", "habits", "settings")
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    from training.paths import default_data_dir

    from .ensemble import sources_from_runs

    data_dir = default_data_dir(args.data_dir)
    options = ExportOptions(
        name=args.name or args.out.resolve().name,
        version=args.version,
        data_dir=data_dir,
        force=args.force,
        opset=args.opset,
        parity_images=args.parity_images,
        feature_tolerance=args.feature_tolerance,
        logprob_tolerance=args.logprob_tolerance,
        quantize=args.quantize == "int8",
        calibration_images=args.calibration_images,
        agreement_images=args.agreement_images,
        keras_weights=not args.no_keras_weights,
        decoder_weights=args.decoder_weights,
    )
    if args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    try:
        sources = sources_from_runs(args.run_dir)
        bundle = write_bundle(sources, args.out, options)
    except (ParityError, ExportError, BundleExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("wrote bundle %s", bundle)
    if args.evaluate:

        def below(name: str) -> Path | None:
            return None if args.eval_out is None else args.eval_out / name

        beam = args.eval_beam_size
        evaluations = {
            "test": (args.eval_out, False, "test", beam),
            "test_greedy": (below("greedy"), False, "test", 1),
            "val": (below("val"), False, "val", beam),
        }
        if options.quantize:  # the int8 encoder too
            evaluations["test_int8"] = (below("int8"), True, "test", beam)
        for key, (eval_out, int8, split, beam_size) in evaluations.items():
            try:
                record = evaluate(
                    bundle,
                    data_dir,
                    beam_size,
                    args.eval_limit,
                    eval_out,
                    int8=int8,
                    split=split,
                )
            except (BundleError, ProviderUnavailable, FileNotFoundError, ValueError) as exc:
                print(f"error: evaluation ({key}) failed: {exc}", file=sys.stderr)
                return 1
            record_metrics(bundle, {key: record})
            log.info("%s metrics: %s", key, record["metrics"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
