"""Feature cache: computes once, rereads after, misses on any change, survives a killed run.

Lite0 with its real weights at a 64 px input (2x2 grid) keeps these fast while giving features of
a real magnitude (random weights give ~1e-12, which any tolerance would call equal).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.imaging import load_rgb, normalise, resize_rgb
from training import features as features_module
from training.encoders import build_encoder, encoder_info
from training.features import extract_features
from training.paths import default_cache_dir, default_data_dir

pytestmark = pytest.mark.train

SMALL: dict[str, Any] = {"encoder": "efficientnet_lite0", "weights": "imagenet", "input_size": 64}


@pytest.fixture
def images(flickr8k_dir: Path, tmp_path: Path) -> list[Path]:
    """Six real Flickr8k JPEGs copied to a scratch folder (tests may edit them)."""
    folder = tmp_path / "images"
    folder.mkdir()
    sources = sorted((flickr8k_dir / "images").glob("*.jpg"))[:6]
    return [Path(shutil.copy(src, folder / src.name)) for src in sources]


def _direct(paths: list[Path], roles: tuple[str, ...]) -> dict[str, np.ndarray]:
    spec = encoder_info("efficientnet_lite0", weights="imagenet", input_size=64).preprocessing
    batch = np.stack([normalise(resize_rgb(load_rgb(p.read_bytes()), spec), spec) for p in paths])
    model = build_encoder("efficientnet_lite0", weights="imagenet", input_size=64, outputs=roles)
    return {k: np.asarray(v) for k, v in model(batch, training=False).items()}


def _shards(cache: Path) -> list[Path]:
    return sorted(cache.glob("features/*/*.npy"))


def test_miss_then_hit_equals_direct_computation(images: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = extract_features(
        images, **SMALL, roles=("pooled", "grid"), cache_dir=cache, batch_size=4, backend="keras"
    )
    assert (first.stats.hits, first.stats.misses) == (0, 6)
    assert first["pooled"].shape == (6, 1280)
    assert first["grid"].shape == (6, 4, 1280)
    expected = _direct(images, ("pooled", "grid"))
    np.testing.assert_allclose(first["pooled"], expected["pooled"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first["grid"], expected["grid"], rtol=1e-4, atol=1e-4)
    shards = _shards(cache)

    again = extract_features(images[::-1], **SMALL, roles=("pooled", "grid"), cache_dir=cache)
    assert (again.stats.hits, again.stats.misses) == (6, 0)
    assert _shards(cache) == shards  # nothing computed, nothing written
    np.testing.assert_array_equal(again["pooled"], first["pooled"][::-1])
    np.testing.assert_array_equal(again["grid"], first["grid"][::-1])


def test_onnx_backend_matches_keras(images: list[Path], tmp_path: Path) -> None:
    got = extract_features(images, **SMALL, cache_dir=tmp_path / "cache", backend="onnx")
    assert got.stats.misses == 6
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    np.testing.assert_allclose(
        got["pooled"], _direct(images, ("pooled",))["pooled"], rtol=1e-4, atol=1e-4
    )


def test_changed_image_misses_and_duplicates_are_encoded_once(
    images: list[Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    before = extract_features(images, **SMALL, cache_dir=cache, backend="keras")
    with Image.open(images[2]) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images[2], quality=90)
    listed = [*images, images[0]]
    after = extract_features(listed, **SMALL, cache_dir=cache, backend="keras")
    assert (after.stats.images, after.stats.hits, after.stats.misses) == (7, 5, 1)
    assert not np.allclose(after["pooled"][2], before["pooled"][2])
    np.testing.assert_array_equal(
        after["pooled"][[0, 1, 3, 4, 5]], before["pooled"][[0, 1, 3, 4, 5]]
    )
    np.testing.assert_array_equal(after["pooled"][6], after["pooled"][0])
    np.testing.assert_allclose(
        after["pooled"][2], _direct([images[2]], ("pooled",))["pooled"][0], rtol=1e-4, atol=1e-4
    )


def test_different_encoders_sizes_and_roles_do_not_collide(
    images: list[Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    small = extract_features(images[:2], **SMALL, cache_dir=cache, backend="keras")
    larger = extract_features(
        images[:2], **{**SMALL, "input_size": 96}, cache_dir=cache, backend="keras"
    )
    xception = extract_features(
        images[:2],
        encoder="xception",
        weights=None,
        input_size=71,
        cache_dir=cache,
        backend="keras",
    )
    grid = extract_features(images[:2], **SMALL, roles=("grid",), cache_dir=cache, backend="keras")
    for run in (larger, xception, grid):
        assert run.stats.misses == 2
    keys = {small.stats.keys["pooled"], larger.stats.keys["pooled"], xception.stats.keys["pooled"]}
    keys.add(grid.stats.keys["grid"])
    assert len(keys) == 4
    assert xception["pooled"].shape == (2, 2048)
    both = extract_features(images[:2], **SMALL, roles=("pooled", "grid"), cache_dir=cache)
    assert (both.stats.hits, both.stats.misses) == (2, 0)  # each role's key is independent
    np.testing.assert_array_equal(both["pooled"], small["pooled"])
    assert not np.allclose(small["pooled"], larger["pooled"])


def test_killed_run_keeps_finished_shards(
    images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(features_module, "SHARD_ROWS", 2)
    broken = images[4]
    good_bytes = broken.read_bytes()
    broken.write_bytes(b"not a jpeg")  # the run dies when it reaches this image
    with pytest.raises(OSError):
        extract_features(images, **SMALL, cache_dir=cache, batch_size=2, backend="keras")
    assert len(_shards(cache)) == 2  # images 0-1 and 2-3 were committed
    (cache / "features" / "stray.npy").write_bytes(b"half-written")  # junk is ignored

    broken.write_bytes(good_bytes)
    resumed = extract_features(images, **SMALL, cache_dir=cache, batch_size=2, backend="keras")
    assert (resumed.stats.hits, resumed.stats.misses) == (4, 2)
    np.testing.assert_allclose(
        resumed["pooled"], _direct(images, ("pooled",))["pooled"], rtol=1e-4, atol=1e-4
    )


def test_default_dirs_follow_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    repo = Path(features_module.__file__).resolve().parents[1]
    assert default_cache_dir() == repo / "cache"
    assert default_data_dir() == (repo.parent / "shared" / "data" / "flickr8k").resolve()
    monkeypatch.setenv("CAPTION_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("CAPTION_DATA_DIR", str(tmp_path / "d"))
    assert default_cache_dir() == tmp_path / "c"
    assert default_data_dir() == tmp_path / "d"
    assert default_data_dir(tmp_path / "flag") == tmp_path / "flag"
