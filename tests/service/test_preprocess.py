"""The service's guarded decoding reproduces the training-side preprocessing exactly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import EmptyBody, ImageTooLarge, UnprocessableImage
from service.imaging import preprocess_file_bytes
from service.model import CaptionModel
from service.preprocess import Preprocessor, decode_image
from tests.service import images


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> CaptionModel:
    return CaptionModel.load(tiny_bundle)


def _variants(flickr8k_dir: Path) -> list[bytes]:
    paths = sorted((flickr8k_dir / "images").glob("*.jpg"))[:3]
    shared = [p.read_bytes() for p in paths]
    photo = Image.open(io.BytesIO(shared[0]))
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees
    photo.save(rotated, format="JPEG", exif=exif.tobytes())
    return [*shared, rotated.getvalue(), images.rgba_png(), images.png_16bit(), images.cmyk_jpeg()]


def test_service_features_equal_training_side_features(
    flickr8k_dir: Path, model: CaptionModel
) -> None:
    spec = model.preprocessing
    for data in _variants(flickr8k_dir):
        served = decode_image(data, spec, max_pixels=40_000_000)
        trained = preprocess_file_bytes(data, spec)
        np.testing.assert_array_equal(served, trained)
        served_features = model.encode(served[None])["pooled"]
        trained_features = model.encode(trained[None])["pooled"]
        np.testing.assert_allclose(served_features, trained_features, atol=1e-5, rtol=0)


def test_exif_orientation_is_applied(model: CaptionModel) -> None:
    spec = model.preprocessing
    stored = images.noise_rgb(60, 40, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    tagged = images.encode(stored, "PNG", exif=exif.tobytes())
    upright = images.encode(stored.transpose(Image.Transpose.ROTATE_270), "PNG")
    served = decode_image(tagged, spec, max_pixels=40_000_000)
    np.testing.assert_array_equal(served, decode_image(upright, spec, max_pixels=40_000_000))
    assert not np.array_equal(
        served, decode_image(images.encode(stored, "PNG"), spec, max_pixels=40_000_000)
    )


def test_limits_and_errors(model: CaptionModel) -> None:
    spec = model.preprocessing
    with pytest.raises(EmptyBody):
        decode_image(b"", spec, max_pixels=100)
    with pytest.raises(ImageTooLarge):
        decode_image(images.png_bomb_header(), spec, max_pixels=40_000_000)
    with pytest.raises(ImageTooLarge):
        decode_image(images.encode(images.noise_rgb(20, 20), "PNG"), spec, max_pixels=399)
    with pytest.raises(UnprocessableImage):
        decode_image(b"GIF89a" + b"\x00" * 20, spec, max_pixels=100)


async def test_preprocessor_runs_in_its_pool(model: CaptionModel) -> None:
    pre = Preprocessor(model.preprocessing, max_pixels=1_000_000, threads=2)
    try:
        decoded = await pre(images.encode(images.noise_rgb(30, 20), "PNG"))
        assert decoded.pixels.shape == model.input_shape and decoded.pixels.dtype == np.float32
        assert (decoded.width, decoded.height) == (30, 20)
        assert decoded.seconds >= 0
    finally:
        pre.close()
