"""An ensemble of step decoders as ONE step model (one ONNX graph for serving).

Merge decoders (``training.model``, ``build_ensemble_step_model``): the members share the
vocabulary and the image features (the same encoder); each keeps its own LSTM state. The
ensemble's states are the members' states concatenated on the last axis, so it has
the ordinary step interface (``service.manifest.DecoderSpec``) with a larger ``hidden_size``::

    token (B,), h (B, sum U_i), c (B, sum U_i), image_features (B, D)
        -> member i on (token, h[:, slice_i], c[:, slice_i], image_features)
        -> logprobs = log(mean_i exp(logprobs_i))   (averaged in probability space)
           h_out, c_out = member outputs concatenated in the same order

The service, beam search and the export parity check run it unchanged; the decoder costs the sum
of the members' step costs (the encoder, which dominates, runs once).

Attention decoders (``training.attention``) ensemble the same way, on their serving split: the
members' memory heads become one head whose ``memory`` is theirs concatenated on the last axis
(``build_memory_ensemble_head``), and the step model gives each member its slice of that memory
and of the states (``build_attention_ensemble_step_model``). Its ``attention`` output is the
mean of the members' weights, still a distribution over the grid. Every member has an ``h`` and
a ``c`` slice of the same width, so the step interface keeps one state size; a GRU member has no
cell state and hands its ``c`` slice back unchanged (zeros from the first step to the last).
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

    return keras.Model(
        inputs={"token": token, "h": h, "c": c, "image_features": features},
        outputs=_combined_outputs(logprobs, h_outs, c_outs),
        name="merge_ensemble_step",
    )


def _combined_outputs(logprobs: list[Any], h_outs: list[Any], c_outs: list[Any]) -> dict[str, Any]:
    """The members' probabilities averaged, their states concatenated in member order."""
    stacked = ops.stack(logprobs, axis=1)  # (B, N, V)
    mean = ops.logsumexp(stacked, axis=1) - math.log(len(logprobs))
    return {
        "logprobs": keras.layers.Identity(dtype="float32", name="logprobs")(mean),
        "h_out": keras.layers.Identity(name="h_out")(ops.concatenate(h_outs, axis=-1)),
        "c_out": keras.layers.Identity(name="c_out")(ops.concatenate(c_outs, axis=-1)),
    }


def _hidden_size(step_model: keras.Model) -> int:
    """Width of a member's ``h`` (a GRU member has no ``c`` to compare it with)."""
    return int(step_model.input["h"].shape[-1])


def build_memory_ensemble_head(heads: Sequence[keras.Model]) -> keras.Model:
    """Grid (B, N, D) -> the members' memories concatenated (B, N, sum M_i)."""
    if len(heads) < 2:
        raise ValueError("an ensemble needs at least two members")
    grid_shapes = {tuple(h.input.shape[1:]) for h in heads}
    if len(grid_shapes) != 1:
        raise ValueError(f"members read different grids: {sorted(grid_shapes)}")
    grid = keras.Input(grid_shapes.pop(), dtype="float32", name="grid")
    memories = [
        keras.Model(head.input, head.output, name=f"member_{i}_memory")(grid)
        for i, head in enumerate(heads)
    ]
    return keras.Model(grid, ops.concatenate(memories, axis=-1), name="ensemble_memory")


def build_attention_ensemble_step_model(members: Sequence[keras.Model]) -> keras.Model:
    """Wrap attention memory step models (``training.attention.build_memory_step_model``:
    inputs ``token``, ``h`` [, ``c``], ``image_features`` = memory (B, N, M_i); outputs
    ``logprobs``, ``attention``, ``h_out`` [, ``c_out``]) into one step model with inputs
    ``token``, ``h``, ``c``, ``image_features`` (B, N, sum M_i)."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    sizes = [_hidden_size(m) for m in members]
    memory_dims = [int(m.input["image_features"].shape[-1]) for m in members]
    grid_sizes = {int(m.input["image_features"].shape[1]) for m in members}
    vocab_sizes = {int(m.output["logprobs"].shape[-1]) for m in members}
    if len(grid_sizes) != 1 or len(vocab_sizes) != 1:
        raise ValueError(f"members disagree: grid sizes {grid_sizes}, vocabulary {vocab_sizes}")
    total = sum(sizes)
    token = keras.Input((), dtype="int32", name="token")
    h = keras.Input((total,), dtype="float32", name="h")
    c = keras.Input((total,), dtype="float32", name="c")
    memory = keras.Input(
        (grid_sizes.pop(), sum(memory_dims)), dtype="float32", name="image_features"
    )

    logprobs, alphas, h_outs, c_outs = [], [], [], []
    start, offset = 0, 0
    for i, (member, size, width) in enumerate(zip(members, sizes, memory_dims, strict=True)):
        wrapped = keras.Model(member.input, member.output, name=f"member_{i}")
        feeds = {
            "token": token,
            "h": h[:, start : start + size],
            "image_features": memory[:, :, offset : offset + width],
        }
        has_cell_state = "c" in member.input
        if has_cell_state:
            feeds["c"] = c[:, start : start + size]
        out = wrapped(feeds)
        logprobs.append(out["logprobs"])
        alphas.append(out["attention"])
        h_outs.append(out["h_out"])
        c_outs.append(out["c_out"] if has_cell_state else c[:, start : start + size])
        start += size
        offset += width

    attention = ops.mean(ops.stack(alphas, axis=1), axis=1)
    outputs = _combined_outputs(logprobs, h_outs, c_outs)
    outputs["attention"] = keras.layers.Identity(dtype="float32", name="attention")(attention)
    return keras.Model(
        inputs={"token": token, "h": h, "c": c, "image_features": memory},
        outputs=outputs,
        name="attention_ensemble_step",
    )
