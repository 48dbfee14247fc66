"""Small image payloads for the service tests, good and hostile, made in memory."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def png_1x1() -> bytes:
    return encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (48, 40), (0, 120, 200, 10)), "JPEG")


def png_16bit() -> bytes:
    ramp = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    image = Image.fromarray(ramp)  # mode I;16
    assert image.mode == "I;16"
    return encode(image, "PNG")


def rgba_png() -> bytes:
    image = Image.new("RGBA", (40, 30), (10, 200, 10, 128))
    return encode(image, "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("P", (32, 32), i * 40) for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def png_bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (the data would never decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
