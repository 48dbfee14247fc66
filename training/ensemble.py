"""An ensemble of merge step decoders as ONE step model (one ONNX graph for serving).

Members share the vocabulary and the image features (the same encoder); each keeps its own LSTM
state. The ensemble's states are the members' states concatenated on the last axis, so it has
the ordinary step interface (``service.manifest.DecoderSpec``) with a larger ``hidden_size``::

    token (B,), h (B, sum U_i), c (B, sum U_i), image_features (B, D)
        -> member i on (token, h[:, slice_i], c[:, slice_i], image_features)
        -> logprobs = log(mean_i exp(logprobs_i))   (averaged in probability space)
           h_out, c_out = member outputs concatenated in the same order

The service, beam search and the export parity check run it unchanged; the decoder costs the sum
of the members' step costs (the encoder, which dominates, runs once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops


def _state_size(step_model: keras.Model) -> int:
    size = int(step_model.input["h"].shape[-1])
    if int(step_model.input["c"].shape[-1]) != size:
        raise ValueError("a member's h and c differ in size")
    return size


def build_ensemble_step_model(members: Sequence[keras.Model]) -> keras.Model:
    """Wrap merge step models (inputs ``token``, ``h``, ``c``, ``image_features``; outputs
    ``logprobs``, ``h_out``, ``c_out``) into one step model with concatenated states."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    sizes = [_state_size(m) for m in members]
    feature_dims = {int(m.input["image_features"].shape[-1]) for m in members}
    vocab_sizes = {int(m.output["logprobs"].shape[-1]) for m in members}
    if len(feature_dims) != 1 or len(vocab_sizes) != 1:
        raise ValueError(
            f"members disagree: feature sizes {feature_dims}, vocabulary sizes {vocab_sizes}"
        )
    total = sum(sizes)
    token = keras.Input((), dtype="int32", name="token")
    h = keras.Input((total,), dtype="float32", name="h")
    c = keras.Input((total,), dtype="float32", name="c")
    features = keras.Input((feature_dims.pop(),), dtype="float32", name="image_features")

    logprobs, h_outs, c_outs = [], [], []
    start = 0
    for i, (member, size) in enumerate(zip(members, sizes, strict=True)):
        # A fresh functional wrapper per member, so the outer model sees unique layer names.
        wrapped = keras.Model(member.input, member.output, name=f"member_{i}")
        out = wrapped(
            {
                "token": token,
                "h": h[:, start : start + size],
                "c": c[:, start : start + size],
                "image_features": features,
            }
        )
        logprobs.append(out["logprobs"])
        h_outs.append(out["h_out"])
        c_outs.append(out["c_out"])
        start += size

    stacked = ops.stack(logprobs, axis=1)  # (B, N, V)
    mean = ops.logsumexp(stacked, axis=1) - math.log(len(members))
    outputs: dict[str, Any] = {
        "logprobs": keras.layers.Identity(dtype="float32", name="logprobs")(mean),
        "h_out": keras.layers.Identity(name="h_out")(ops.concatenate(h_outs, axis=-1)),
        "c_out": keras.layers.Identity(name="c_out")(ops.concatenate(c_outs, axis=-1)),
    }
    return keras.Model(
        inputs={"token": token, "h": h, "c": c, "image_features": features},
        outputs=outputs,
        name="merge_ensemble_step",
    )
