"""Keras encoder and step decoder -> ONNX files with the names the bundle contract fixes.

Both conversions go through ``tf2onnx.convert.from_function`` on a ``tf.function`` with a named
input signature, so the ONNX inputs carry exactly the names serving feeds, and the outputs are
named by the keys of the returned dict. The leading (batch) dimension of every graph input and
output is renamed to ``batch`` so tools and humans see one symbolic batch size.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from service.manifest import FeatureRole

DEFAULT_OPSET = 17
BATCH_DIM = "batch"

ENCODER_INPUT = "image"
ENCODER_OUTPUT_NAMES: dict[FeatureRole, str] = {
    "pooled": "features",
    "grid": "grid",
    "memory": "memory",
}

DECODER_INPUTS = ("token", "h", "c", "image_features")
DECODER_OUTPUTS = ("logprobs", "h_out", "c_out")


class ExportError(Exception):
    """The Keras model cannot be exported as the bundle contract requires."""


def _name_batch_dim(model: onnx.ModelProto) -> None:
    """Give the first dimension of every graph input and output the symbolic name ``batch``."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH_DIM


def _check_io(model: onnx.ModelProto, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    got_in = tuple(i.name for i in model.graph.input)
    got_out = tuple(o.name for o in model.graph.output)
    if sorted(got_in) != sorted(inputs) or sorted(got_out) != sorted(outputs):
        raise ExportError(
            f"ONNX graph has inputs {got_in} and outputs {got_out}; expected {inputs} / {outputs}"
        )


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def export_encoder(
    encoder: Any,
    path: Path,
    *,
    height: int,
    width: int,
    roles: tuple[FeatureRole, ...] = ("pooled",),
    opset: int = DEFAULT_OPSET,
) -> dict[FeatureRole, str]:
    """Write ``encoder`` (normalised NHWC float32 -> dict role -> tensor) as ``path``.

    Returns the ``EncoderSpec.outputs`` mapping, e.g. ``{"pooled": "features"}``.
    """
    import tensorflow as tf
    import tf2onnx

    names = {role: ENCODER_OUTPUT_NAMES[role] for role in roles}
    spec = (tf.TensorSpec((None, height, width, 3), tf.float32, name=ENCODER_INPUT),)

    @tf.function(input_signature=spec)  # type: ignore[untyped-decorator]
    def encode(image: Any) -> dict[str, Any]:
        out = encoder(image, training=False)
        if not isinstance(out, Mapping):
            raise ExportError("the encoder must return a dict of role -> tensor")
        missing = [role for role in roles if role not in out]
        if missing:
            raise ExportError(f"encoder has no output for roles {missing}; it has {sorted(out)}")
        return {names[role]: tf.identity(out[role], name=names[role]) for role in roles}

    model, _ = tf2onnx.convert.from_function(encode, input_signature=spec, opset=opset)
    _check_io(model, (ENCODER_INPUT,), tuple(names.values()))
    _name_batch_dim(model)
    _save(model, path)
    return dict(names)


def export_step_decoder(
    step_model: Any,
    path: Path,
    *,
    hidden_size: int,
    feature_dim: int,
    opset: int = DEFAULT_OPSET,
    states: tuple[str, ...] = ("h", "c"),
    grid_size: int | None = None,
    attention: bool = False,
) -> Path:
    """Write the Keras step model (dict in, dict out; see ``DecoderSpec``) as ``path``.

    The merge decoder reads the pooled vector (B, D) with states ``h``, ``c``; an attention
    decoder reads the grid or its memory (B, ``grid_size``, D) (``feature_dim`` = the width of
    one cell of what it reads), may have other ``states`` (``h`` alone for a GRU) and has an
    ``attention`` output (B, N) when ``attention`` is set.
    """
    import tensorflow as tf
    import tf2onnx

    image_shape = (None, feature_dim) if grid_size is None else (None, grid_size, feature_dim)
    spec = (
        tf.TensorSpec((None,), tf.int32, name="token"),
        *(tf.TensorSpec((None, hidden_size), tf.float32, name=name) for name in states),
        tf.TensorSpec(image_shape, tf.float32, name="image_features"),
    )
    input_names = ("token", *states, "image_features")
    output_names = ("logprobs", *(f"{name}_out" for name in states))
    output_names += ("attention",) if attention else ()

    @tf.function(input_signature=spec)  # type: ignore[untyped-decorator]
    def step(*args: Any) -> dict[str, Any]:
        out = step_model(dict(zip(input_names, args, strict=True)), training=False)
        missing = [name for name in output_names if name not in out]
        if missing:
            raise ExportError(f"step model has no outputs {missing}; it has {sorted(out)}")
        return {name: tf.identity(out[name], name=name) for name in output_names}

    model, _ = tf2onnx.convert.from_function(step, input_signature=spec, opset=opset)
    _check_io(model, input_names, output_names)
    _name_batch_dim(model)
    return _save(model, path)
