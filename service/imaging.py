"""Image decoding and the encoder's preprocessing, shared by training and serving.

Training computes its features through these same functions, so the service reproduces the
bundle's declared preprocessing bit for bit. EXIF orientation is applied (a phone photo shot in
portrait is captioned upright); every PIL mode (L, P, RGBA, CMYK, I;16, ...) becomes RGB,
transparent areas composited on white.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from service.manifest import Preprocessing

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, EXIF orientation applied."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_rgb(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """Stretch an RGB image to the encoder's input size: uint8 array (H, W, 3)."""
    resized = image.resize((spec.width, spec.height), resample=_RESAMPLE[spec.resize])
    return np.asarray(resized, dtype=np.uint8)


def normalise(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 in the encoder's layout, ``(x - mean) / std``."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    out = (pixels.astype(np.float32) - mean) / std
    if spec.layout == "NCHW":
        out = np.moveaxis(out, -1, -3)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_rgb(data: bytes) -> Image.Image:
    """Decode encoded image bytes to RGB (raises PIL's errors on bad data)."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return to_rgb(opened)


def preprocess_file_bytes(data: bytes, spec: Preprocessing) -> np.ndarray:
    """Bytes -> one normalised encoder input (H, W, 3) float32 (or (3, H, W) for NCHW)."""
    return normalise(resize_rgb(load_rgb(data), spec), spec)
