"""Evaluate a model BUNDLE (exactly what the service serves) on a Flickr8k split.

    python -m training evaluate --bundle models/default --split test --beam-size 3 --out DIR

Each image goes through the bundle's own preprocessing (``service.imaging``), its ONNX encoder
and step decoder (``service.model.CaptionModel``) in batches; the captions are scored against
the cleaned references (``training.data``) with ``training.scoring``.

``evaluate(EvalOptions(...))`` returns an ``Evaluation`` (export records it in the manifest);
``Evaluation.write(DIR)``, which the command line calls, writes:

* ``DIR/captions.jsonl``: one ``{"image", "caption", "score", "references"}`` per line;
* ``DIR/summary.json``: metrics, a bootstrap 95% interval on BLEU-4, the captions' habits
  (``training.caption_habits``: repeated bigrams, dangling endings, diversity, length, gender
  words against the references), settings, counts, timing.

``--split val`` scores the validation images that training holds out from the end of the official
train list (``training.data.train_val_split``, ``--val-size`` must match the run's ``val_size``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.manifest import BundleError
from service.model import CaptionModel, Provider, ProviderUnavailable
from training.caption_habits import caption_habits
from training.data import image_dir, load_captions, load_split, train_val_split
from training.paths import REPO_ROOT, default_data_dir
from training.scoring import (
    METRIC_KEYS,
    CaptionScorer,
    Interval,
    bootstrap_ci,
    paired_bootstrap,
    tokenize_pair,
)

CI_KEYS = ("low", "high", "confidence", "samples")  # the Interval fields summary.json keeps


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how; the CLI flags of ``python -m training evaluate`` but ``--out``."""

    bundle: Path  # bundle folder (manifest.json, encoder.onnx, decoder.onnx, vocab.json)
    split: str = "test"  # "test" (official list) or "val" (the tail training holds out)
    data_dir: Path | None = None  # Flickr8k folder; None: training.paths.default_data_dir
    val_size: int = 500  # validation images training held out; must match the run
    beam_size: int = 3  # 1 = greedy
    length_penalty: float = 0.7  # alpha in logprob / length**alpha, ranks the beams
    limit: int | None = None  # only the first N images of the split
    batch_size: int = 32  # images encoded and decoded together
    provider: Provider = "auto"  # ONNX Runtime execution provider: "auto", "cpu" or "cuda"
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = all cores
    int8: bool = False  # use the bundle's int8 encoder
    bootstrap: int = 1000  # resamples for the BLEU-4 interval; 0: no interval
    compare: Path | None = None  # captions.jsonl of an earlier run on the same images


@dataclass(frozen=True)
class BundleInfo:
    path: str
    name: str
    version: str
    encoder: str
    decoder: str


@dataclass(frozen=True)
class Settings:
    """The settings a result was produced with (``summary.json``'s ``settings``)."""

    beam_size: int
    length_penalty: float
    max_steps: int
    batch_size: int
    provider: str  # the execution provider the session actually got
    int8: bool
    threads: int
    limit: int | None
    val_size: int | None  # None on the test split
    data_dir: str


@dataclass(frozen=True)
class Counts:
    images: int
    references: int
    empty_captions: int
    distinct_captions: int
    vocabulary_used: int
    mean_caption_words: float


@dataclass(frozen=True)
class Timing:
    load_s: float
    caption_s: float
    images_per_s: float
    scoring_s: float
    total_s: float


@dataclass(frozen=True)
class Comparison:
    """Paired bootstrap of this run's BLEU-4 against an earlier run's captions."""

    against: str  # the earlier run's captions.jsonl
    metric: str
    this: float
    other: float
    difference: float  # this - other on the full set
    low: float
    high: float
    this_better: float  # share of resamples in which this run scores higher
    confidence: float


@dataclass(frozen=True)
class Captioned:
    """One line of ``captions.jsonl``."""

    image: str
    caption: str
    score: float
    references: list[str]


@dataclass(frozen=True)
class Evaluation:
    """A bundle's captions on a split and their scores."""

    bundle: BundleInfo
    split: str
    metrics: dict[str, float]  # METRIC_KEYS -> value
    bleu_4_ci: Interval | None  # None with bootstrap=0
    comparison: Comparison | None  # None without compare
    settings: Settings
    counts: Counts
    timing: Timing
    captions: list[Captioned]
    habits: dict[str, float | int | None]  # CaptionHabits.to_dict() of the captions

    def summary(self) -> dict[str, Any]:
        """The contents of ``summary.json``."""
        ci = self.bleu_4_ci
        interval = None if ci is None else {k: getattr(ci, k) for k in CI_KEYS}
        return {
            "bundle": asdict(self.bundle),
            "split": self.split,
            "metrics": dict(self.metrics),
            "bleu_4_ci": interval,
            "comparison": None if self.comparison is None else asdict(self.comparison),
            "settings": asdict(self.settings),
            "counts": asdict(self.counts),
            "habits": dict(self.habits),
            "timing": asdict(self.timing),
        }

    def write(self, out: Path) -> None:
        """Write ``captions.jsonl`` and ``summary.json`` into ``out`` (created if needed)."""
        out.mkdir(parents=True, exist_ok=True)
        with (out / "captions.jsonl").open("w") as handle:
            for row in self.captions:
                handle.write(json.dumps(asdict(row)) + "\n")
        (out / "summary.json").write_text(json.dumps(self.summary(), indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training evaluate",
        description=(
            "Caption a Flickr8k split with a model bundle through ONNX Runtime (the served "
            "path) and score it with BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap) and "
            "NLTK corpus BLEU. Writes captions.jsonl and summary.json into --out."
        ),
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        default=REPO_ROOT / "models" / "default",
        help="bundle folder (manifest.json, encoder.onnx, decoder.onnx, vocab.json) "
        "(default: models/default in the repository)",
    )
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="'test': the official 1,000 test images; 'val': the validation images carved from "
        "the end of the train list (default: test)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="Flickr8k folder (default: $CAPTION_DATA_DIR, else ../shared/data/flickr8k "
        "next to the repository)",
    )
    parser.add_argument(
        "--val-size",
        type=int,
        default=500,
        help="how many train images training held out for validation; must match the run "
        "(default: 500)",
    )
    parser.add_argument(
        "--beam-size", type=int, default=3, help="1 = greedy; k > 1 = beam search (default: 3)"
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=0.7,
        help="alpha in score = logprob / length**alpha used to rank beams (default: 0.7)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate only the first N images of the split (default: all)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="images encoded and decoded together (default: 32)",
    )
    parser.add_argument(
        "--provider",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="ONNX Runtime execution provider; auto = CUDA when available, else CPU "
        "(default: auto)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads; 0 = all cores available (default: 0)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="use the bundle's int8-quantised encoder (fails if the bundle has none)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples for the BLEU-4 95%% interval; 0 disables (default: 1000)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="CAPTIONS_JSONL",
        help="captions.jsonl of an earlier evaluation on the same images: adds a paired "
        "bootstrap of the BLEU-4 difference (this run minus that one) to summary.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "runs" / "evaluate",
        help="output folder for captions.jsonl and summary.json, created if needed "
        "(default: runs/evaluate in the repository)",
    )
    return parser


def split_images(data_dir: Path, split: str, val_size: int) -> list[str]:
    """Image names of ``split``: the official test list, or the validation tail of train."""
    if split == "test":
        return load_split(data_dir, "test")
    _, val = train_val_split(load_split(data_dir, "train"), val_size)
    return val


def caption_images(
    model: CaptionModel,
    folder: Path,
    names: Sequence[str],
    *,
    beam_size: int,
    length_penalty: float,
    batch_size: int,
) -> list[tuple[str, float]]:
    """Caption ``names`` batch by batch; returns (caption, score) per image, in order."""
    request = model.request(beam_size=beam_size, length_penalty=length_penalty)
    results: list[tuple[str, float]] = []
    with tqdm(total=len(names), unit="img", desc="captioning", file=sys.stderr) as bar:
        for start in range(0, len(names), batch_size):
            chunk = names[start : start + batch_size]
            images = np.stack([model.preprocess((folder / n).read_bytes()) for n in chunk])
            for [best] in model.caption_images(images, [request] * len(chunk)):
                results.append((best.text, best.score))
            bar.update(len(chunk))
    return results


def compare(
    path: Path | None, references: dict[str, list[str]], hyps: dict[str, list[str]], samples: int
) -> Comparison | None:
    """Paired bootstrap of this run's BLEU-4 against an earlier run's captions.jsonl."""
    if path is None:
        return None
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    other = {row["image"]: row["caption"] for row in rows}
    if set(other) != set(hyps):
        raise ValueError(
            f"{path} covers {len(other)} images, this run {len(hyps)}; compare the same images"
        )
    refs, other_tokens = tokenize_pair(references, other)
    result = paired_bootstrap(refs, other_tokens, hyps, samples=samples)
    return Comparison(
        against=str(path),
        metric=result.metric,
        this=result.b,
        other=result.a,
        difference=result.difference,
        low=result.low,
        high=result.high,
        this_better=result.b_better,
        confidence=result.confidence,
    )


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.beam_size < 1:
        parser.error("--beam-size must be >= 1")
    if args.length_penalty < 0:
        parser.error("--length-penalty must be >= 0")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")


def evaluate(options: EvalOptions) -> Evaluation:
    """Caption the split with the bundle and score the captions; writes nothing."""
    started = time.perf_counter()
    data_dir = default_data_dir(options.data_dir)
    references = load_captions(data_dir)
    names = [n for n in split_images(data_dir, options.split, options.val_size) if n in references]
    if options.limit is not None:
        names = names[: options.limit]
    if not names:
        raise ValueError(f"no images with captions in split {options.split!r} under {data_dir}")

    model = CaptionModel.load(
        options.bundle,
        provider=options.provider,
        intra_op_threads=options.threads,
        use_int8=options.int8,
    )
    model.warm_up([min(options.batch_size, len(names))])
    loaded = time.perf_counter()
    captions = caption_images(
        model,
        image_dir(data_dir),
        names,
        beam_size=options.beam_size,
        length_penalty=options.length_penalty,
        batch_size=options.batch_size,
    )
    captioned = time.perf_counter()

    hypotheses = {name: text for name, (text, _) in zip(names, captions, strict=True)}
    refs, hyps = tokenize_pair(references, hypotheses)
    with CaptionScorer() as scorer:
        metrics = scorer.score_tokenized(refs, hyps)
    samples = options.bootstrap
    interval = bootstrap_ci(refs, hyps, samples=samples) if samples else None
    comparison = compare(options.compare, references, hyps, samples=samples or 1000)
    scored = time.perf_counter()

    texts = [text for text, _ in captions]
    manifest = model.manifest
    return Evaluation(
        bundle=BundleInfo(
            path=str(Path(options.bundle).resolve()),
            name=manifest.name,
            version=manifest.version,
            encoder=manifest.encoder.name,
            decoder=manifest.decoder.architecture,
        ),
        split=options.split,
        metrics={key: metrics[key] for key in METRIC_KEYS},
        bleu_4_ci=interval,
        comparison=comparison,
        settings=Settings(
            beam_size=options.beam_size,
            length_penalty=options.length_penalty,
            max_steps=model.max_steps,
            batch_size=options.batch_size,
            provider=model.provider,
            int8=options.int8,
            threads=options.threads,
            limit=options.limit,
            val_size=options.val_size if options.split == "val" else None,
            data_dir=str(data_dir),
        ),
        counts=Counts(
            images=len(names),
            references=sum(len(references[n]) for n in names),
            empty_captions=sum(1 for t in texts if not t),
            distinct_captions=len(set(texts)),
            vocabulary_used=len({w for t in texts for w in t.split()}),
            mean_caption_words=float(np.mean([len(t.split()) for t in texts])),
        ),
        timing=Timing(
            load_s=round(loaded - started, 3),
            caption_s=round(captioned - loaded, 3),
            images_per_s=round(len(names) / max(captioned - loaded, 1e-9), 2),
            scoring_s=round(scored - captioned, 3),
            total_s=round(time.perf_counter() - started, 3),
        ),
        captions=[
            Captioned(image=name, caption=text, score=score, references=references[name])
            for name, (text, score) in zip(names, captions, strict=True)
        ],
        habits=caption_habits(hypotheses, references).to_dict(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    options = EvalOptions(**{f.name: getattr(args, f.name) for f in fields(EvalOptions)})
    try:
        result = evaluate(options)
        result.write(args.out)
    except (BundleError, ProviderUnavailable, FileNotFoundError, ValueError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    metrics, ci = result.metrics, result.bleu_4_ci
    interval = f" [{ci.low:.4f}, {ci.high:.4f}]" if ci else ""
    print(
        f"{result.counts.images} images, {args.split}, beam {args.beam_size}: "
        f"BLEU-4 {metrics['bleu_4']:.4f}{interval} METEOR {metrics['meteor']:.4f} "
        f"ROUGE-L {metrics['rouge_l']:.4f} CIDEr {metrics['cider']:.4f} -> {args.out}"
    )
    habits = result.habits
    print(
        f"repeated bigram {habits['repeated_bigram']:.3f}, dangling end "
        f"{habits['dangling_end']:.3f}, distinct {habits['distinct']:.3f}, mean length "
        f"{habits['mean_length']:.2f}, gender error {habits['gender_error']}"
    )
    if result.comparison:
        c = result.comparison
        print(
            f"BLEU-4 minus {c.against}: {c.difference:+.4f} "
            f"[{c.low:+.4f}, {c.high:+.4f}], better in {c.this_better:.0%} of resamples"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
