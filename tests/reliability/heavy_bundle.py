"""The tiny bundle with a compute-heavy encoder, so that the model (not HTTP) is the bottleneck.

The tiny bundle's encoder costs microseconds, so on 2 cores its "capacity" is the HTTP stack's,
and twice that load starves the event loop itself: no server can refuse fast then. Overload
tests need what production has: a model that takes milliseconds per image in ONNX Runtime
(which releases the GIL). This encoder keeps the interface (``image`` (B, S, S, 3) NHWC ->
``features`` (B, D)) and adds a stack of 3x3 convolutions; ``layers`` sets its cost.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.manifest import file_entry, load_manifest, write_manifest
from tests.tiny_bundle import IR_VERSION, OPSET


def _heavy_encoder(
    path: Path, image_size: int, feature_dim: int, channels: int, layers: int
) -> None:
    rng = np.random.default_rng(7)

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value.astype(np.float32), name=name)

    nodes = [helper.make_node("Transpose", ["image"], ["x0"], perm=[0, 3, 1, 2])]
    init = [const("w0", rng.standard_normal((channels, 3, 3, 3)) * 0.3)]
    nodes += [
        helper.make_node("Conv", ["x0", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
    ]
    scale = 1.0 / np.sqrt(channels * 9)
    for i in range(1, layers + 1):
        init.append(const(f"w{i}", rng.standard_normal((channels, channels, 3, 3)) * scale))
        nodes += [
            helper.make_node("Conv", [f"r{i - 1}", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
    init.append(const("proj", rng.standard_normal((channels, feature_dim)) * 0.5))
    nodes += [
        helper.make_node("ReduceMean", [f"r{layers}"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "proj"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "heavy_encoder",
        inputs=[
            helper.make_tensor_value_info(
                "image", TensorProto.FLOAT, ["batch", image_size, image_size, 3]
            )
        ],
        outputs=[
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", feature_dim])
        ],
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def build_heavy_bundle(tiny: Path, out_dir: Path, *, channels: int = 96, layers: int = 8) -> Path:
    """A copy of the ``tiny`` bundle whose encoder costs ``layers`` 3x3 convolutions (the
    defaults: ~20 ms an image on one core here)."""
    shutil.copytree(tiny, out_dir)
    manifest = load_manifest(out_dir)
    spec = manifest.encoder.preprocessing
    _heavy_encoder(
        out_dir / "encoder.onnx", spec.height, manifest.encoder.feature_dim, channels, layers
    )
    files = {**manifest.files, "encoder.onnx": file_entry(out_dir / "encoder.onnx")}
    write_manifest(out_dir, manifest.model_copy(update={"name": "heavy", "files": files}))
    return out_dir
