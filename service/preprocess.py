"""Untrusted image bytes -> the encoder's normalised input, in a thread pool, with limits.

The pixel transform is ``service.imaging`` (the same functions training used), so service
features equal training features for the same file. What this module adds is safety: the
declared pixel count is checked from the header before anything is decoded (decompression
bombs -> 413 ``image_too_large``), PIL's own bomb guard is set to the same limit, and every way
a decoder can fail on bad bytes becomes 422 ``invalid_image`` (never a 500). Animated images give
their first frame; EXIF orientation is applied; any mode becomes RGB (see ``service.imaging``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from service.errors import EmptyBody, ImageTooLarge, UnprocessableImage
from service.imaging import normalise, resize_rgb, to_rgb
from service.manifest import Preprocessing

log = logging.getLogger(__name__)

# what PIL's decoders raise on malformed input (truncated data, bad chunks, bad headers...)
_DECODER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)


# the raster formats accepted (Pillow would also open EPS via Ghostscript, PSD, FITS, ...: a
# large attack surface for no captioning use); JPEG includes MPO (what many phones write)
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")


@dataclass(frozen=True, eq=False)
class DecodedImage:
    pixels: NDArray[np.float32]
    """Normalised (H, W, 3) float32, or (3, H, W) for NCHW encoders."""
    width: int
    """Of the image as sent (before EXIF orientation and resizing)."""
    height: int
    seconds: float = 0.0
    """Time spent decoding, resizing and normalising."""


def decode_image(data: bytes, spec: Preprocessing, *, max_pixels: int) -> NDArray[np.float32]:
    """Encoded bytes -> normalised (H, W, 3) float32 (or (3, H, W)); raises ``service.errors``."""
    return decode_sized(data, spec, max_pixels=max_pixels).pixels


def decode_sized(data: bytes, spec: Preprocessing, *, max_pixels: int) -> DecodedImage:
    """``decode_image`` with the image's size as sent."""
    if not data:
        raise EmptyBody("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels}"
                )
            opened.load()  # the first frame of an animation
            rgb = to_rgb(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image declares too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise UnprocessableImage(
            "the data is not an image in a format this service reads"
        ) from None
    except _DECODER_ERRORS as exc:
        raise UnprocessableImage(f"the image is corrupt or truncated: {exc}") from None
    return DecodedImage(normalise(resize_rgb(rgb, spec), spec), width, height)


class Preprocessor:
    """Runs ``decode_image`` in its own thread pool (PIL releases the GIL while decoding)."""

    def __init__(self, spec: Preprocessing, *, max_pixels: int, threads: int) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
        # PIL refuses (error) above 2x this and warns above it; our own check above is exact
        Image.MAX_IMAGE_PIXELS = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    async def __call__(self, data: bytes) -> DecodedImage:
        """Decode ``data`` off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._timed, data)

    def _timed(self, data: bytes) -> DecodedImage:
        start = time.perf_counter()
        decoded = decode_sized(data, self.spec, max_pixels=self.max_pixels)
        return DecodedImage(
            decoded.pixels, decoded.width, decoded.height, time.perf_counter() - start
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
