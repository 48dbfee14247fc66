"""Roofline inputs: multiply-accumulates of an ONNX graph, and the CPU's measured float32 peak.

``count_macs`` fixes every symbolic dimension of the graph inputs to 1 (one image, one row), runs
ONNX shape inference, and counts the MACs of the compute-heavy operators:

    Conv     prod(output shape) * (C_in / groups) * prod(kernel)
    MatMul   prod(output shape) * K
    Gemm     prod(output shape) * K

Elementwise ops, pooling and activations are ignored (a few percent of a CNN). FLOPs = 2 x MACs.
``measure_peak_gflops`` times a large float32 matrix multiply in NumPy (its BLAS, all cores).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GraphCost:
    macs: int
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)
    """Heavy nodes whose shapes inference could not resolve (should be empty)."""

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _shape_map(model: object) -> dict[str, list[int]]:
    graph = model.graph  # type: ignore[attr-defined]
    shapes: dict[str, list[int]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [int(d.dim_value) for d in dims]
    for init in graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]
    return shapes


def count_macs(onnx_path: Path) -> GraphCost:
    """MACs of one forward pass at batch 1 (symbolic dims set to 1)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    initializers = {i.name for i in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        for dim in graph_input.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = 1
    model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = _shape_map(model)
    by_op: Counter[str] = Counter()
    uncounted: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        out = shapes.get(node.output[0])
        a = shapes.get(node.input[0])
        b = shapes.get(node.input[1])
        if out is None or a is None or b is None:
            uncounted[node.op_type] += 1
            continue
        if node.op_type == "Conv":
            per_output = math.prod(b[1:])  # (C_out, C_in / groups, kh, kw)
        elif node.op_type == "MatMul":
            per_output = a[-1]
        else:
            trans_a = any(att.name == "transA" and att.i == 1 for att in node.attribute)
            per_output = a[0] if trans_a else a[-1]
        by_op[node.op_type] += math.prod(out) * per_output
    return GraphCost(sum(by_op.values()), dict(by_op), dict(uncounted))


def measure_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an ``n x n`` float32 matmul over ``repeats`` runs (after one warm-up)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    np.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def measure_peak_gflops_ort(n: int = 2048, repeats: int = 10) -> float:
    """Best GFLOP/s of an ``n x n`` float32 MatMul in ONNX Runtime (its MLAS kernels, all cores):
    the peak the encoder's own runtime can reach (NumPy's BLAS may not know this CPU)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    feed = {k: rng.standard_normal((n, n), dtype=np.float32) for k in ("a", "b")}
    session.run(None, feed)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9
