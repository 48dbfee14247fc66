"""The naive baseline: how the tutorials serve a CNN + LSTM captioner, with the bundle's weights.

One image at a time, no batching:

1. decode and resize the image (the shared ``service.imaging`` code, so inputs are identical),
2. ``encoder.predict(x)`` on the Keras encoder,
3. for every word: pad the caption so far to ``max_length``, ``decoder.predict([features,
   padded prefix])`` on the Keras *training* model (teacher-forcing graph, all positions), and
   take the argmax at the last real position. The whole prefix is recomputed for every word.

The Keras models are rebuilt from the bundle: the decoder from ``manifest.training["config"]
["model"]`` + ``decoder.keras.weights.h5`` (``training.model.build_training_model``; when the
bundle lacks that file, the named training run's ``best.weights.h5``), the encoder from
``training.encoders.build_encoder`` with the run's encoder settings. Same weights as the ONNX
graphs the service runs, so greedy captions agree: the bench checks that they do.

When a bundle has no Keras weights (e.g. the tiny test bundle), ``OnnxPrefixBaseline`` keeps the
naive *algorithm* on the bundle's own ONNX graphs: encoder at batch 1, and the step decoder re-run
from zero state over the whole prefix for every word (quadratic in caption length). It is
labelled as such in every report.
"""

from __future__ import annotations

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


def _encoder_settings(config: dict[str, Any]) -> tuple[str, str | None, int | None]:
    encoder = config.get("encoder", "efficientnet_lite0")
    if isinstance(encoder, dict):
        name = str(encoder.get("name", "efficientnet_lite0"))
        weights = encoder.get("weights", config.get("weights", "imagenet"))
        size = encoder.get("input_size", config.get("input_size"))
    else:
        name, weights, size = (
            str(encoder),
            config.get("weights", "imagenet"),
            config.get("input_size"),
        )
    return name, None if weights in (None, "none", "random") else str(weights), size


class KerasNaiveBaseline:
    """Tutorial-style Keras ``predict`` loop (see the module docstring)."""

    label = "Keras predict, one image at a time, prefix re-run per word"

    def __init__(self, bundle_dir: Path, manifest: Manifest, weights_file: Path) -> None:
        from training.encoders import build_encoder
        from training.model import ModelConfig, build_training_model

        config = manifest.training["config"]
        self.manifest = manifest
        self.vocab = Vocabulary.load(bundle_dir / manifest.vocab_file)
        self.decoder = build_training_model(ModelConfig.from_dict(config["model"]))
        self.decoder.load_weights(str(weights_file))
        name, weights, size = _encoder_settings(config)
        self.encoder = build_encoder(name, weights=weights, input_size=size, outputs=("pooled",))

    def caption(self, data: bytes) -> str:
        spec = self.manifest.decoder
        pre = self.manifest.encoder.preprocessing
        x = preprocess_file_bytes(data, pre)[None]
        features = self.encoder.predict(x, verbose=0)["pooled"]
        sequence = [spec.special_tokens.start]
        for _ in range(spec.max_length - 1):
            padded = np.zeros((1, spec.max_length), dtype=np.int32)
            padded[0, : len(sequence)] = sequence
            logits = self.decoder.predict({"image_features": features, "tokens": padded}, verbose=0)
            token = int(np.argmax(logits[0, len(sequence) - 1]))
            if token == spec.special_tokens.end:
                break
            sequence.append(token)
        return self.vocab.decode(sequence[1:])


class OnnxPrefixBaseline:
    """The naive algorithm on the bundle's ONNX graphs (for bundles without Keras weights)."""

    label = "ONNX fallback (no Keras weights in bundle): batch 1, prefix re-run per word"

    def __init__(self, bundle_dir: Path) -> None:
        from service.runtime import CaptionModel

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


def keras_weights(bundle_dir: Path, manifest: Manifest) -> tuple[Path, str] | None:
    """Where the Keras decoder weights are: the bundle's ``decoder.keras.weights.h5``, else the
    training run it names (``manifest.training.config.run_dir``, relative to the repository)
    when that still holds ``best.weights.h5``. ``None`` when neither exists."""
    config = manifest.training.get("config")
    if not isinstance(config, dict) or "model" not in config:
        return None
    name = manifest.training.get("keras_weights_file")
    if name and (bundle_dir / str(name)).is_file():
        return bundle_dir / str(name), "bundle"
    run_dir = config.get("run_dir")
    if run_dir:
        run = Path(run_dir) if Path(run_dir).is_absolute() else REPO_ROOT / str(run_dir)
        if (run / "best.weights.h5").is_file():
            return run / "best.weights.h5", f"training run {run_dir}"
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "images": self.images,
            "seconds_per_image": self.seconds_per_image,
            "mean_s": float(np.mean(self.seconds_per_image)),
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
