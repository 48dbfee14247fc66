"""Half-size decoder files: weights rounded to float16, stored as float16, computed in float32.

Two steps, so that the export's parity check still compares like with like:

1. ``round_weights_to_float16`` rounds every float32 weight of the Keras step model to the
   nearest float16 value (kept as float32). Keras and the exported graph then hold the same
   numbers, and the parity check and the evaluation measure the rounded model.
2. ``store_float16`` rewrites the exported ONNX graph: each large float32 initializer whose
   values are all exactly float16 values is stored as float16 and turned back into float32 by a
   ``Cast`` node at the top of the graph. The rewrite loses nothing; ONNX Runtime folds the
   casts into constants when it loads the session, so the arithmetic and the speed stay those
   of float32.

Rounding to float16 keeps 11 significant bits (relative error <= 2**-11 ~ 4.9e-4), far finer
than the spread of a trained decoder's weights; the effect on captions is measured, not assumed:
the export records its metrics like any other bundle's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_ELEMENTS = 1024
"""Smaller tensors (biases, norms) stay float32: a cast would cost more than it saves."""
CAST_SUFFIX = "__float16"


def round_weights_to_float16(model: Any) -> int:
    """Round the float32 weights of a Keras model to float16 precision in place; return how
    many values were rounded."""
    rounded = 0
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        if value.dtype != np.float32:
            continue
        variable.assign(value.astype(np.float16).astype(np.float32))
        rounded += value.size
    return rounded


def _exactly_float16(values: np.ndarray) -> bool:
    half = values.astype(np.float16)
    return bool(np.all(np.isfinite(half)) and np.array_equal(half.astype(np.float32), values))


def store_float16(model: onnx.ModelProto, min_elements: int = MIN_ELEMENTS) -> int:
    """Store the graph's exactly-float16 float32 initializers as float16; return the number of
    values moved. The graph computes the same float32 numbers afterwards."""
    graph = model.graph
    casts, kept, moved = [], [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        if values.size < min_elements or not _exactly_float16(values):
            kept.append(init)
            continue
        stored = f"{init.name}{CAST_SUFFIX}"
        kept.append(numpy_helper.from_array(values.astype(np.float16), stored))
        casts.append(
            helper.make_node(
                "Cast", [stored], [init.name], to=TensorProto.FLOAT, name=f"{stored}_cast"
            )
        )
        moved += values.size
    nodes = [*casts, *graph.node]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    return moved


def store_file_float16(path: Path, min_elements: int = MIN_ELEMENTS) -> int:
    """``store_float16`` on the ONNX file at ``path``, rewritten in place."""
    model = onnx.load(str(path))
    moved = store_float16(model, min_elements)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return moved
