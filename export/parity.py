"""Export self-check: ONNX Runtime against Keras on the same real images.

Three checks, each at every batch size asked for (1 and 8 by default):

* encoder: every ONNX output against the Keras output, max absolute difference;
* decoder: the step models in lockstep on the Keras features (same tokens and states fed to both
  at every step, advancing along Keras' greedy path), max absolute difference of ``logprobs``;
* captions: greedy decoding end to end (Keras encoder + Keras step model against ONNX encoder +
  ONNX step model, both through ``service.decoding.decode_batch``) must give identical tokens.

``check_parity`` returns the ``ParityReport`` recorded in the manifest and raises ``ParityError``
(carrying that report) when a tolerance is exceeded or a caption differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.decoding import DecodeRequest, StepOutput, decode_batch
from service.manifest import FeatureRole, ParityReport

DEFAULT_FEATURE_TOLERANCE = 1e-4
DEFAULT_LOGPROB_TOLERANCE = 1e-4


class ParityError(Exception):
    """ONNX Runtime and Keras disagree beyond the stated tolerance."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class DecoderShape:
    """What the parity decode needs to know about the step decoder."""

    hidden_size: int
    max_length: int
    start_id: int
    end_id: int
    image_role: FeatureRole = "pooled"
    state_names: tuple[str, ...] = ("h", "c")
    """Recurrent state inputs in order (``h``, ``c`` for LSTMs, ``h`` for a GRU)."""


def ort_session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


_NOT_STATES = ("token", "image_features")


def _feeds(
    names: Sequence[str], tokens: np.ndarray, states: list[np.ndarray], image: np.ndarray
) -> dict[str, np.ndarray]:
    feeds = {"token": np.asarray(tokens, dtype=np.int32)}
    feeds.update({n: np.asarray(s, dtype=np.float32) for n, s in zip(names, states, strict=True)})
    feeds["image_features"] = np.asarray(image, dtype=np.float32)
    return feeds


class KerasStep:
    """``service.decoding.StepFn`` over the Keras step model (states: its inputs other than
    ``token`` and ``image_features``, e.g. ``h``, ``c``; ``attention`` when it has that output)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        names = list(model.input) if isinstance(model.input, dict) else ["h", "c"]
        self.state_names = tuple(n for n in names if n not in _NOT_STATES)

    def __call__(
        self, tokens: np.ndarray, states: list[np.ndarray], image: np.ndarray
    ) -> StepOutput:
        out = self.model(_feeds(self.state_names, tokens, states, image), training=False)
        return StepOutput(
            logprobs=np.asarray(out["logprobs"]),
            states=[np.asarray(out[f"{n}_out"]) for n in self.state_names],
            attention=np.asarray(out["attention"]) if "attention" in out else None,
        )


class OnnxStep:
    """``service.decoding.StepFn`` over ``decoder.onnx`` (states and attention read from the
    graph's inputs and outputs)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.state_names = tuple(i.name for i in session.get_inputs() if i.name not in _NOT_STATES)
        self.attention = any(o.name == "attention" for o in session.get_outputs())

    def __call__(
        self, tokens: np.ndarray, states: list[np.ndarray], image: np.ndarray
    ) -> StepOutput:
        names = ["logprobs", *(f"{n}_out" for n in self.state_names)]
        names += ["attention"] if self.attention else []
        values = self.session.run(names, _feeds(self.state_names, tokens, states, image))
        n = len(self.state_names)
        return StepOutput(
            logprobs=values[0],
            states=list(values[1 : 1 + n]),
            attention=values[1 + n] if self.attention else None,
        )


def keras_features(encoder: Any, images: np.ndarray, role: FeatureRole) -> np.ndarray:
    return np.asarray(encoder(images, training=False)[role], dtype=np.float32)


def greedy_tokens(step: Any, features: np.ndarray, shape: DecoderShape) -> list[tuple[int, ...]]:
    """Greedy token ids per image through the shared batched decoder."""
    # DecoderSpec.max_length counts <start>; decoding counts generated tokens only.
    request = DecodeRequest(beam_size=1, max_length=shape.max_length - 1)
    results = decode_batch(
        step,
        features,
        [shape.hidden_size] * len(shape.state_names),
        [request] * len(features),
        start_id=shape.start_id,
        end_id=shape.end_id,
    )
    return [hyps[0].tokens for hyps in results]


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def encoder_max_diff(
    encoder: Any,
    session: ort.InferenceSession,
    outputs: dict[FeatureRole, str],
    images: np.ndarray,
    batch_sizes: Sequence[int],
) -> float:
    worst = 0.0
    for batch in batch_sizes:
        for part in _chunks(len(images), batch):
            ref = encoder(images[part], training=False)
            got = session.run(list(outputs.values()), {"image": images[part]})
            for role, value in zip(outputs, got, strict=True):
                diff = float(np.max(np.abs(value - np.asarray(ref[role]))))
                worst = max(worst, diff)
    return worst


def decoder_max_diff(
    keras_step: KerasStep,
    onnx_step: OnnxStep,
    features: np.ndarray,
    shape: DecoderShape,
    batch_sizes: Sequence[int],
) -> float:
    """Lockstep along Keras' greedy path; worst |logprobs|, state (and attention) difference."""
    worst = 0.0
    for batch in batch_sizes:
        for part in _chunks(len(features), batch):
            image = features[part]
            n = len(image)
            tokens = np.full((n,), shape.start_id, dtype=np.int32)
            states = [np.zeros((n, shape.hidden_size), np.float32) for _ in shape.state_names]
            for _ in range(shape.max_length - 1):
                ref = keras_step(tokens, states, image)
                got = onnx_step(tokens, states, image)
                pairs = [(ref.logprobs, got.logprobs), *zip(ref.states, got.states, strict=True)]
                if ref.attention is not None and got.attention is not None:
                    pairs.append((ref.attention, got.attention))
                for a, b in pairs:
                    worst = max(worst, float(np.max(np.abs(a - b))))
                tokens = np.argmax(ref.logprobs, axis=-1).astype(np.int32)
                states = ref.states
    return worst


def check_parity(
    *,
    encoder: Any,
    step_model: Any,
    encoder_path: Path,
    decoder_path: Path,
    encoder_outputs: dict[FeatureRole, str],
    images: np.ndarray,
    shape: DecoderShape,
    batch_sizes: Sequence[int] = (1, 8),
    feature_tolerance: float = DEFAULT_FEATURE_TOLERANCE,
    logprob_tolerance: float = DEFAULT_LOGPROB_TOLERANCE,
) -> ParityReport:
    """Run all three checks on ``images`` (normalised (N, H, W, 3)); raise ``ParityError``."""
    enc_session = ort_session(encoder_path)
    onnx_step = OnnxStep(ort_session(decoder_path))
    keras_step = KerasStep(step_model)

    feature_diff = encoder_max_diff(encoder, enc_session, encoder_outputs, images, batch_sizes)
    ref_features = keras_features(encoder, images, shape.image_role)
    logprob_diff = decoder_max_diff(keras_step, onnx_step, ref_features, shape, batch_sizes)

    output_name = encoder_outputs[shape.image_role]
    identical = True
    for batch in batch_sizes:
        for part in _chunks(len(images), batch):
            onnx_features = enc_session.run([output_name], {"image": images[part]})[0]
            keras_caps = greedy_tokens(keras_step, ref_features[part], shape)
            onnx_caps = greedy_tokens(onnx_step, onnx_features, shape)
            identical = identical and keras_caps == onnx_caps

    report = ParityReport(
        batch_sizes=list(batch_sizes),
        feature_tolerance=feature_tolerance,
        feature_max_abs_diff=feature_diff,
        logprob_tolerance=logprob_tolerance,
        logprob_max_abs_diff=logprob_diff,
        greedy_captions_identical=identical,
        images=len(images),
    )
    problems = []
    if feature_diff > feature_tolerance:
        problems.append(f"encoder features differ by {feature_diff:.3g} > {feature_tolerance:g}")
    if logprob_diff > logprob_tolerance:
        problems.append(f"decoder logprobs differ by {logprob_diff:.3g} > {logprob_tolerance:g}")
    if not identical:
        problems.append("greedy captions differ between Keras and ONNX Runtime")
    if problems:
        raise ParityError("export parity check failed: " + "; ".join(problems), report)
    return report
