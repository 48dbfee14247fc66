"""The naive baseline: how the tutorials serve a CNN + LSTM captioner, with the bundle's weights.

One image at a time, no batching:

1. decode and resize the image (the shared ``service.imaging`` code, so inputs are identical),
2. ``encoder.predict(x)`` on the Keras encoder,
3. for every word: pad the caption so far to ``max_length``, ``decoder.predict([features,
   padded prefix])`` on the Keras *training* model (teacher-forcing graph, all positions), and
   take the argmax at the last real position. The whole prefix is recomputed for every word.

The Keras models are rebuilt from the bundle: the decoder from ``manifest.training["config"]
["model"]`` + ``decoder.keras.weights.h5`` (``training.model.build_training_model``), the encoder
from ``training.encoders.build_encoder`` with the run's encoder settings. Same weights as the
ONNX graphs the service runs, so greedy captions agree.

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


def load_baseline(bundle_dir: Path) -> NaivePipeline:
    """The Keras baseline when the bundle carries Keras weights and config, else the ONNX one."""
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    weights_name = manifest.training.get("keras_weights_file")
    config = manifest.training.get("config")
    if weights_name and isinstance(config, dict) and "model" in config:
        weights = bundle_dir / str(weights_name)
        if weights.is_file():
            return KerasNaiveBaseline(bundle_dir, manifest, weights)
    return OnnxPrefixBaseline(bundle_dir)


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
