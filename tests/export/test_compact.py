"""Float16 storage of decoder weights: lossless for rounded weights, untouched otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.compact import round_weights_to_float16, store_file_float16, store_float16


def _matmul_graph(weights: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, weights.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, weights.shape[1]])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    inits = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(["y"], {"x": x})[0]
    return out


def test_rounded_weights_are_stored_as_float16_and_compute_the_same() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(64, 32)).astype(np.float16).astype(np.float32)
    bias = rng.normal(size=(32,)).astype(np.float32)  # small: stays float32
    model = _matmul_graph(weights, bias)
    x = rng.normal(size=(5, 64)).astype(np.float32)
    before = _run(model, x)

    assert store_float16(model) == weights.size
    onnx.checker.check_model(model)
    stored = {i.name: i.data_type for i in model.graph.initializer}
    assert stored == {"w__float16": TensorProto.FLOAT16, "b": TensorProto.FLOAT}
    np.testing.assert_array_equal(_run(model, x), before)


def test_weights_that_float16_cannot_hold_exactly_stay_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(64, 32)).astype(np.float32)  # not rounded
    path = tmp_path / "m.onnx"
    onnx.save_model(_matmul_graph(weights, np.zeros(32, np.float32)), str(path))
    assert store_file_float16(path) == 0
    inits = onnx.load(str(path)).graph.initializer
    assert all(i.data_type == TensorProto.FLOAT for i in inits)


@pytest.mark.train
def test_keras_weights_round_to_float16_values() -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
    assert round_weights_to_float16(model) == 16 * 8 + 8
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        np.testing.assert_array_equal(value.astype(np.float16).astype(np.float32), value)
