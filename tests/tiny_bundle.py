"""A tiny but real model bundle for tests: ONNX graphs built with ``onnx.helper``, no TensorFlow.

The encoder and the step decoder have exactly the interfaces of the exported Keras models
(see ``service.manifest``), with random seeded weights:

* encoder ``image`` float32 (batch, S, S, 3) -> mean colour of each cell of a 4x4 grid
  (Reshape + ReduceMean) -> MatMul + Add + Tanh -> ``features`` float32 (batch, D);
* step decoder ``token`` int32 (B,), ``h``/``c`` float32 (B, H), ``image_features`` (B, D) ->
  a real LSTM cell (Gather, MatMul, Sigmoid, Tanh) -> ``logprobs`` (B, V) (LogSoftmax), ``h_out``,
  ``c_out``.

Hidden unit 0 is wired as a clock: its cell state grows by the same amount every step whatever the
input, and it raises the ``<end>`` logit, so greedy decoding stops after a handful of words. Word
logits depend on the image features, so different images get different captions; a penalty on
repeating the previous token keeps captions from being one word over and over.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.manifest import (
    DecoderSpec,
    EncoderSpec,
    Manifest,
    Preprocessing,
    SpecialTokens,
    StateTensor,
    file_entry,
    write_manifest,
)
from service.vocabulary import SPECIALS, Vocabulary

DEFAULT_WORDS: tuple[str, ...] = (
    "a",
    "dog",
    "man",
    "woman",
    "child",
    "runs",
    "sits",
    "on",
    "the",
    "grass",
    "in",
    "water",
    "red",
    "blue",
    "ball",
    "with",
    "street",
    "snow",
    "jumps",
    "plays",
)

OPSET = 17
IR_VERSION = 8
GRID = 4  # the encoder averages colours over a GRID x GRID grid of cells


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name=name)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="captioner-tests",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _encoder(
    path: Path, rng: np.random.Generator, image_size: int, feature_dim: int, *, grid: bool
) -> None:
    cell = image_size // GRID
    cells = GRID * GRID * 3
    weights = (rng.standard_normal((cells, feature_dim)) * 2.5 / np.sqrt(cells)).astype(np.float32)
    bias = (rng.standard_normal(feature_dim) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["image", "grid_shape"], ["blocks"]),
        helper.make_node("ReduceMean", ["blocks"], ["cell_means"], axes=[2, 4], keepdims=0),
        helper.make_node("Reshape", ["cell_means", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["projected"]),
        helper.make_node("Add", ["projected", "b"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["features"]),
    ]
    outputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", feature_dim])]
    initializer = [
        _const("grid_shape", np.array([-1, GRID, cell, GRID, cell, 3], dtype=np.int64)),
        _const("flat_shape", np.array([-1, cells], dtype=np.int64)),
        _const("w", weights),
        _const("b", bias),
    ]
    if grid:  # per-cell features (batch, GRID*GRID, D) for an attention decoder
        w_grid = (rng.standard_normal((3, feature_dim)) * 2.0).astype(np.float32)
        nodes += [
            helper.make_node("Reshape", ["cell_means", "cells_shape"], ["cell_rows"]),
            helper.make_node("MatMul", ["cell_rows", "w_grid"], ["grid_pre"]),
            helper.make_node("Tanh", ["grid_pre"], ["grid"]),
        ]
        outputs.append(
            helper.make_tensor_value_info(
                "grid", TensorProto.FLOAT, ["batch", GRID * GRID, feature_dim]
            )
        )
        initializer += [
            _const("cells_shape", np.array([-1, GRID * GRID, 3], dtype=np.int64)),
            _const("w_grid", w_grid),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        inputs=[
            helper.make_tensor_value_info(
                "image", TensorProto.FLOAT, ["batch", image_size, image_size, 3]
            )
        ],
        outputs=outputs,
        initializer=initializer,
    )
    _save(graph, path)


def _decoder(
    path: Path,
    rng: np.random.Generator,
    vocab_size: int,
    feature_dim: int,
    hidden: int,
    *,
    attention: bool,
) -> None:
    embed = hidden
    gates = 4 * hidden  # order: input, forget, cell candidate, output

    def normal(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    emb = normal(vocab_size, embed, scale=1.0)
    w_x = normal(embed, gates, scale=1.0 / np.sqrt(embed))
    w_h = normal(hidden, gates, scale=1.0 / np.sqrt(hidden))
    w_f = normal(feature_dim, gates, scale=1.0 / np.sqrt(feature_dim))
    b = np.zeros(gates, dtype=np.float32)
    # Unit 0 is a clock: gates independent of the input, input/forget/output gates open, a
    # constant candidate, so c grows by tanh(0.3) per step and h_0 = tanh(c) rises towards 1.
    clock = [0, hidden, 2 * hidden, 3 * hidden]
    for m in (w_x, w_h, w_f):
        m[:, clock] = 0.0
    b[clock] = [12.0, 12.0, 0.3, 12.0]
    w_x[:, clock] = 0.0

    w_o = normal(hidden, vocab_size, scale=1.2)
    w_fo = normal(feature_dim, vocab_size, scale=0.8)
    b_o = np.zeros(vocab_size, dtype=np.float32)
    w_o[0, :] = 0.0
    w_o[0, 2] = 12.0  # the clock raises <end> ...
    b_o[2] = -7.0  # ... from a low start
    w_fo[:, 2] = 0.0
    for special in (0, 1, 3):  # never <pad>, <start> or <unk>
        w_o[:, special] = 0.0
        w_fo[:, special] = 0.0
        b_o[special] = -30.0
    repeat_penalty = np.zeros((vocab_size, vocab_size), dtype=np.float32)
    np.fill_diagonal(repeat_penalty, -4.0)

    image = "image_features"
    image_shape: list[str | int] = ["batch", feature_dim]
    nodes: list[onnx.NodeProto] = []
    initializer: list[onnx.TensorProto] = []
    outputs: list[onnx.ValueInfoProto] = []
    if attention:  # dot-product attention of the previous h over the grid -> context (B, D)
        image, image_shape = "context", ["batch", GRID * GRID, feature_dim]
        nodes += [
            helper.make_node("MatMul", ["h", "w_q"], ["query"]),
            helper.make_node("Unsqueeze", ["query", "axis_1"], ["query3"]),
            helper.make_node("Mul", ["image_features", "query3"], ["match"]),
            helper.make_node("ReduceSum", ["match", "axis_2"], ["scores"], keepdims=0),
            helper.make_node("Softmax", ["scores"], ["attention"], axis=1),
            helper.make_node("Unsqueeze", ["attention", "axis_2"], ["attention3"]),
            helper.make_node("Mul", ["image_features", "attention3"], ["weighted"]),
            helper.make_node("ReduceSum", ["weighted", "axis_1"], ["context"], keepdims=0),
        ]
        initializer += [
            _const("w_q", normal(hidden, feature_dim, scale=4.0 / np.sqrt(hidden))),
            _const("axis_1", np.array([1], dtype=np.int64)),
            _const("axis_2", np.array([2], dtype=np.int64)),
        ]
        outputs.append(
            helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["batch", GRID * GRID])
        )

    nodes += [
        helper.make_node("Gather", ["embedding", "token"], ["x"], axis=0),
        helper.make_node("MatMul", ["x", "w_x"], ["zx"]),
        helper.make_node("MatMul", ["h", "w_h"], ["zh"]),
        helper.make_node("MatMul", [image, "w_f"], ["zf"]),
        helper.make_node("Add", ["zx", "zh"], ["z1"]),
        helper.make_node("Add", ["z1", "zf"], ["z2"]),
        helper.make_node("Add", ["z2", "b"], ["z"]),
        helper.make_node("Split", ["z", "split"], ["zi", "zg_f", "zc", "zo"], axis=1),
        helper.make_node("Sigmoid", ["zi"], ["gi"]),
        helper.make_node("Sigmoid", ["zg_f"], ["gf"]),
        helper.make_node("Tanh", ["zc"], ["gc"]),
        helper.make_node("Sigmoid", ["zo"], ["go"]),
        helper.make_node("Mul", ["gf", "c"], ["keep"]),
        helper.make_node("Mul", ["gi", "gc"], ["write"]),
        helper.make_node("Add", ["keep", "write"], ["c_out"]),
        helper.make_node("Tanh", ["c_out"], ["c_act"]),
        helper.make_node("Mul", ["go", "c_act"], ["h_out"]),
        helper.make_node("MatMul", ["h_out", "w_o"], ["lh"]),
        helper.make_node("MatMul", [image, "w_fo"], ["lf"]),
        helper.make_node("Gather", ["repeat_penalty", "token"], ["lr"], axis=0),
        helper.make_node("Add", ["lh", "lf"], ["l1"]),
        helper.make_node("Add", ["l1", "lr"], ["l2"]),
        helper.make_node("Add", ["l2", "b_o"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["logprobs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_step_decoder",
        inputs=[
            helper.make_tensor_value_info("token", TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", hidden]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", hidden]),
            helper.make_tensor_value_info("image_features", TensorProto.FLOAT, image_shape),
        ],
        outputs=[
            helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["batch", vocab_size]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", hidden]),
            helper.make_tensor_value_info("c_out", TensorProto.FLOAT, ["batch", hidden]),
            *outputs,
        ],
        initializer=[
            *initializer,
            _const("embedding", emb),
            _const("w_x", w_x),
            _const("w_h", w_h),
            _const("w_f", w_f),
            _const("b", b),
            _const("split", np.array([hidden] * 4, dtype=np.int64)),
            _const("w_o", w_o),
            _const("w_fo", w_fo),
            _const("b_o", b_o),
            _const("repeat_penalty", repeat_penalty),
        ],
    )
    _save(graph, path)


def build_tiny_bundle(
    out_dir: Path,
    *,
    words: Sequence[str] = DEFAULT_WORDS,
    image_size: int = 32,
    feature_dim: int = 16,
    hidden: int = 8,
    seed: int = 0,
    max_length: int = 12,
    name: str = "tiny",
    version: str = "0.0.1",
    attention: bool = False,
) -> Path:
    """Write a manifest-valid bundle into ``out_dir`` (created if needed) and return it.

    ``attention=True`` makes the encoder also output ``grid`` (batch, 16, D) and the decoder an
    attention decoder over it (``image_role="grid"``, output ``attention`` (B, 16)).
    """
    if image_size % GRID:
        raise ValueError(f"image_size must be a multiple of {GRID}")
    if hidden < 2:
        raise ValueError("hidden must be at least 2 (unit 0 is the clock)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = Vocabulary(tokens=SPECIALS + tuple(words))

    _encoder(out_dir / "encoder.onnx", rng, image_size, feature_dim, grid=attention)
    _decoder(out_dir / "decoder.onnx", rng, len(vocab), feature_dim, hidden, attention=attention)
    vocab.save(out_dir / "vocab.json")

    files = {f: file_entry(out_dir / f) for f in ("encoder.onnx", "decoder.onnx", "vocab.json")}
    manifest = Manifest(
        name=name,
        version=version,
        encoder=EncoderSpec(
            name="tiny_grid_mean",
            outputs={"pooled": "features", "grid": "grid"} if attention else {"pooled": "features"},
            feature_dim=feature_dim,
            grid_size=GRID * GRID if attention else None,
            preprocessing=Preprocessing(
                height=image_size,
                width=image_size,
                resize="bilinear",
                mean=(127.5, 127.5, 127.5),
                std=(127.5, 127.5, 127.5),
            ),
            weights=f"random (seed {seed})",
        ),
        decoder=DecoderSpec(
            architecture="lstm_attention" if attention else "lstm_merge",
            image_role="grid" if attention else "pooled",
            attention_output="attention" if attention else None,
            states=[
                StateTensor(input="h", output="h_out", size=hidden),
                StateTensor(input="c", output="c_out", size=hidden),
            ],
            hidden_size=hidden,
            vocab_size=len(vocab),
            max_length=max_length,
            special_tokens=SpecialTokens(
                pad=vocab.pad_id, start=vocab.start_id, end=vocab.end_id, unk=vocab.unk_id
            ),
        ),
        files=files,
        training={"note": "random weights for tests; not a trained model"},
    )
    write_manifest(out_dir, manifest)
    return out_dir
