"""The naive baseline: how the tutorials serve a CNN + LSTM captioner, with the bundle's weights.

    python -m training.baseline --bundle models/default [--warmup 1] [--out result.json] IMAGE...

prints (or writes to ``--out``) a ``BaselineResult`` as JSON; ``make bench`` runs it as a
subprocess for its phase (d) when the train extra is installed.

One image at a time, no batching:

1. decode and resize the image (the shared ``service.imaging`` code, so inputs are identical),
2. ``encoder.predict(x)`` on the Keras encoder,
3. for every word: pad the caption so far to ``max_length``, ``decoder.predict([features,
   padded prefix])`` on the Keras *training* model (teacher-forcing graph, all positions), and
   take the argmax at the last real position. The whole prefix is recomputed for every word.

The Keras models are rebuilt from the bundle: the decoder from ``manifest.training["config"]
["model"]`` + ``decoder.keras.weights.h5`` (``training.model.build_training_model``, or
``training.attention.build_training_model`` for an attention run (``config["decoder"] ==
"attention"``); when the bundle lacks that file, the named training run's ``best.weights.h5``),
the encoder from ``training.encoders.build_encoder`` with the run's encoder settings and the
output the decoder reads: the pooled vector for a merge decoder, the (B, N, D) grid for an
attention decoder (whatever image role the exported ONNX graphs pass between them, the Keras
training model takes the grid). Same weights as the ONNX graphs the service runs, so greedy
captions agree: the bench checks that they do.

When a bundle has no Keras weights (e.g. the tiny test bundle), ``OnnxPrefixBaseline`` keeps the
naive *algorithm* on the bundle's own ONNX graphs: encoder at batch 1, and the step decoder re-run
from zero state over the whole prefix for every word (quadratic in caption length). It is
labelled as such in every report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.imaging import preprocess_file_bytes
from service.manifest import Manifest, load_manifest
from service.vocabulary import Vocabulary

REPO_ROOT = Path(__file__).resolve().parents[1]


class NaivePipeline(Protocol):
    label: str

    def caption(self, data: bytes) -> str: ...


class KerasNaiveBaseline:
    """Tutorial-style Keras ``predict`` loop (see the module docstring).

    An ensemble bundle is rebuilt member by member; each word is the argmax of the members'
    averaged probabilities, which is what the ensemble step decoder computes. An attention
    decoder re-runs its teacher-forced graph (attention over the grid at every position) on the
    whole padded prefix for every word, like a merge decoder.
    """

    label = "Keras predict, one image at a time, prefix re-run per word"

    def __init__(
        self, bundle_dir: Path, manifest: Manifest, members: list[tuple[dict[str, Any], Path]]
    ) -> None:
        from export.run import encoder_settings
        from training.encoders import build_encoder

        self.manifest = manifest
        self.vocab = Vocabulary.load(bundle_dir / manifest.vocab_file)
        self.decoders = [_keras_decoder(config, weights_file) for config, weights_file in members]
        roles = {_feature_role(config) for config, _ in members}
        if len(roles) != 1:
            raise ValueError(f"ensemble members read different image features: {sorted(roles)}")
        self.role = roles.pop()
        name, weights, size = encoder_settings(members[0][0])
        self.encoder = build_encoder(name, weights=weights, input_size=size, outputs=(self.role,))

    def caption(self, data: bytes) -> str:
        spec = self.manifest.decoder
        pre = self.manifest.encoder.preprocessing
        x = preprocess_file_bytes(data, pre)[None]
        features = self.encoder.predict(x, verbose=0)[self.role]
        sequence = [spec.special_tokens.start]
        for _ in range(spec.max_length - 1):
            padded = np.zeros((1, spec.max_length), dtype=np.int32)
            padded[0, : len(sequence)] = sequence
            probs = np.zeros(spec.vocab_size, dtype=np.float64)
            for decoder in self.decoders:
                inputs = {"image_features": features, "tokens": padded}
                logits = decoder.predict(inputs, verbose=0)[0, len(sequence) - 1]
                shifted = np.exp(logits - logits.max())
                probs += shifted / shifted.sum()
            token = int(np.argmax(probs))
            if token == spec.special_tokens.end:
                break
            sequence.append(token)
        return self.vocab.decode(sequence[1:])


def _is_attention(config: dict[str, Any]) -> bool:
    return bool(config.get("decoder", "merge") == "attention")


def _feature_role(config: dict[str, Any]) -> str:
    """The Keras encoder output the run's training model reads."""
    return "grid" if _is_attention(config) else "pooled"


def _keras_decoder(config: dict[str, Any], weights_file: Path) -> Any:
    """The run's teacher-forced training model with its weights (merge or attention)."""
    if _is_attention(config):
        from training.attention import AttentionConfig
        from training.attention import build_training_model as build_attention

        decoder = build_attention(AttentionConfig.from_dict(config["model"]))
    else:
        from training.model import ModelConfig, build_training_model

        decoder = build_training_model(ModelConfig.from_dict(config["model"]))
    decoder.load_weights(str(weights_file))
    return decoder


class OnnxPrefixBaseline:
    """The naive algorithm on the bundle's ONNX graphs (for bundles without Keras weights)."""

    label = "ONNX fallback (no Keras weights in bundle): batch 1, prefix re-run per word"

    def __init__(self, bundle_dir: Path) -> None:
        from service.model import CaptionModel

        self.model = CaptionModel.load(bundle_dir)

    def caption(self, data: bytes) -> str:
        model = self.model
        spec = model.manifest.decoder
        features = model.encode(model.preprocess(data)[None])[spec.image_role]
        sizes = [s.size for s in spec.states]
        sequence = [spec.special_tokens.start]
        for _ in range(model.max_steps):
            states = [np.zeros((1, n), dtype=np.float32) for n in sizes]
            for token in sequence:  # recompute the whole prefix from scratch
                out = model.step(np.array([token], dtype=np.int32), states, features)
                states = out.states
            nxt = int(np.argmax(out.logprobs[0]))
            if nxt == spec.special_tokens.end:
                break
            sequence.append(nxt)
        return model.vocab.decode(sequence[1:])


def _run_weights(run_dir: object) -> Path | None:
    if not run_dir:
        return None
    run = Path(str(run_dir))
    run = run if run.is_absolute() else REPO_ROOT / run
    weights = run / "best.weights.h5"
    return weights if weights.is_file() else None


def keras_weights(
    bundle_dir: Path, manifest: Manifest
) -> tuple[list[tuple[dict[str, Any], Path]], str] | None:
    """The Keras decoder(s) behind a bundle as ``(config, weights file)`` pairs: the bundle's
    ``decoder.keras.weights.h5``, else the training run it names (``config.run_dir``, relative to
    the repository) when that still holds ``best.weights.h5``; for an ensemble bundle, every
    member's run (``manifest.training["members"]``). ``None`` when any of them is missing."""
    members = manifest.training.get("members")
    if isinstance(members, list) and members:
        found: list[tuple[dict[str, Any], Path]] = []
        for member in members:
            config = member.get("config") if isinstance(member, dict) else None
            weights = _run_weights(member.get("run_dir")) if isinstance(member, dict) else None
            if not isinstance(config, dict) or "model" not in config or weights is None:
                return None
            found.append((config, weights))
        runs = ", ".join(str(m["run_dir"]) for m in members)
        return found, f"training runs {runs}"
    config = manifest.training.get("config")
    if not isinstance(config, dict) or "model" not in config:
        return None
    name = manifest.training.get("keras_weights_file")
    if name and (bundle_dir / str(name)).is_file():
        return [(config, bundle_dir / str(name))], "bundle"
    weights = _run_weights(config.get("run_dir"))
    if weights is not None:
        return [(config, weights)], f"training run {config.get('run_dir')}"
    return None


def load_baseline(bundle_dir: Path) -> NaivePipeline:
    """The Keras baseline when Keras weights can be found (see ``keras_weights``), else the ONNX
    one. Whether the weights are the bundle's is checked by comparing captions (``measure``)."""
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    found = keras_weights(bundle_dir, manifest)
    if found is None:
        return OnnxPrefixBaseline(bundle_dir)
    pipeline = KerasNaiveBaseline(bundle_dir, manifest, found[0])
    pipeline.label = f"{pipeline.label} (weights from the {found[1]})"
    return pipeline


@dataclass(frozen=True)
class BaselineResult:
    label: str
    images: int
    seconds_per_image: list[float]
    captions: list[str]

    @property
    def throughput(self) -> float:
        """Images per second when requests are served one at a time (1 / mean latency)."""
        return 1.0 / float(np.mean(self.seconds_per_image))

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.seconds_per_image))

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "images": self.images,
            "seconds_per_image": self.seconds_per_image,
            "mean_s": self.mean_s,
            "throughput": self.throughput,
            "captions": self.captions,
        }


def measure(pipeline: NaivePipeline, blobs: list[bytes], *, warmup: int = 1) -> BaselineResult:
    """Time ``pipeline.caption`` on each image in turn (after ``warmup`` untimed calls)."""
    for data in blobs[:warmup]:
        pipeline.caption(data)
    times: list[float] = []
    captions: list[str] = []
    for data in blobs:
        start = time.perf_counter()
        captions.append(pipeline.caption(data))
        times.append(time.perf_counter() - start)
    return BaselineResult(pipeline.label, len(blobs), times, captions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.baseline", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=1, help="untimed captions first")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    parser.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    blobs = [path.read_bytes() for path in args.images]
    result = measure(load_baseline(args.bundle), blobs, warmup=args.warmup)
    text = json.dumps(result.to_dict(), indent=2)
    if args.out is None:
        sys.stdout.write(text + "\n")
    else:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
