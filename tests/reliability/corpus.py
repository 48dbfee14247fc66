"""Hostile and odd request payloads, generated in memory (nothing is stored in the repo).

Each ``Case`` is one HTTP request to the service and what a user must see: an exact status and
error ``code``, or (``ok_or``) either a caption or that error, for inputs some decoders tolerate
(a flipped bit inside JPEG entropy data decodes to a slightly wrong picture, not an error).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tests.service import images


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    code: str | None  # None: a caption (200)
    body: bytes = b""
    content_type: str | None = "image/jpeg"
    path: str = "/caption"
    headers: dict[str, str] = field(default_factory=dict)
    ok_or: bool = False  # a 200 is also acceptable


def _png_chunk(kind: bytes, data: bytes, *, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value)


def png_with_header(width: int, height: int, *, bad_crc: bool = False, idat: bool = True) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header, crc=1 if bad_crc else None)
    if idat:
        out += _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return out + _png_chunk(b"IEND", b"")


def gif_with_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame declare ``width`` x ``height``."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 6
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;"
    return head + frame


def jpeg_with_app1(payload: bytes, base: bytes) -> bytes:
    """``base`` JPEG with an APP1 segment carrying ``payload`` right after SOI."""
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return base[:2] + segment + base[2:]


def exif_orientation(value: int) -> bytes:
    image = Image.new("RGB", (40, 24), (120, 40, 200))
    exif = Image.Exif()
    exif[0x0112] = value
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def exif_huge_ifd() -> bytes:
    """TIFF header whose first IFD claims 65535 entries (and has none)."""
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 0xFFFF)


def multipart(parts: list[tuple[str, bytes]], boundary: str = "xYzZY") -> tuple[bytes, str]:
    body = b""
    for headers, data in parts:
        body += f"--{boundary}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def build(jpeg: bytes, *, max_upload_bytes: int, max_batch_body_bytes: int) -> list[Case]:
    """The corpus, from one real JPEG and the server's body limits."""
    png = images.encode(images.noise_rgb(64, 48, seed=3), "PNG")
    gif = images.encode(images.noise_rgb(64, 48, seed=4).convert("P"), "GIF")
    webp = images.encode(images.noise_rgb(64, 48, seed=5), "WEBP", quality=80)
    flipped = bytearray(jpeg)
    for i in range(len(jpeg) // 2, len(jpeg) // 2 + 64, 7):
        flipped[i] ^= 0x5A
    palette = Image.new("P", (50, 30), 3)
    palette.putpalette([i % 256 for i in range(768)])
    b64 = base64.b64encode(jpeg).decode()
    form_ok, form_ct = multipart(
        [('Content-Disposition: form-data; name="image"; filename="a.jpg"', jpeg)]
    )
    nested = b'{"image_base64": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    big_number = b'{"image_base64": "' + b64.encode() + b'", "beam_size": ' + b"9" * 5000 + b"}"
    oversized = json.dumps({"image_base64": "A" * (max_upload_bytes * 2)}).encode()
    cases = [
        # --- truncated / corrupt / wrong magic ---
        Case("JPEG cut after 100 bytes", 422, "invalid_image", jpeg[:100]),
        Case("JPEG cut in half", 422, "invalid_image", jpeg[: len(jpeg) // 2]),
        Case("JPEG entropy bits flipped", 422, "invalid_image", bytes(flipped), ok_or=True),
        Case("JPEG without SOI magic", 422, "invalid_image", b"\x00\x00" + jpeg[2:]),
        Case("PNG cut in IDAT", 422, "invalid_image", png[: len(png) // 2], "image/png"),
        Case("PNG bad IHDR CRC", 422, "invalid_image", png_with_header(8, 8, bad_crc=True)),
        Case("PNG without IDAT", 422, "invalid_image", png_with_header(8, 8, idat=False)),
        Case("PNG 0x0", 422, "invalid_image", png_with_header(0, 0), "image/png"),
        Case("PNG magic then text", 422, "invalid_image", b"\x89PNG\r\n\x1a\nhello world"),
        Case("GIF cut in half", 422, "invalid_image", gif[: len(gif) // 2], "image/gif"),
        Case("GIF header only", 422, "invalid_image", b"GIF89a", "image/gif"),
        Case("WebP cut in half", 422, "invalid_image", webp[: len(webp) // 2], "image/webp"),
        Case(
            "WebP RIFF garbage", 422, "invalid_image", b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\xff" * 8
        ),
        Case("zero bytes", 422, "empty_body", b""),
        Case("one byte", 422, "invalid_image", b"\xff"),
        Case("random bytes", 422, "invalid_image", np.random.default_rng(1).bytes(4096)),
        Case("PDF as image", 422, "invalid_image", b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF"),
        Case("SVG as image", 422, "invalid_image", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        Case("EPS (needs Ghostscript)", 422, "invalid_image", b"%!PS-Adobe-3.0 EPSF-3.0\n"),
        Case("PCX (format not accepted)", 422, "invalid_image", images.encode(palette, "PCX")),
        Case("TGA (format not accepted)", 422, "invalid_image", images.encode(palette, "TGA")),
        Case("TIFF", 200, None, images.encode(images.noise_rgb(40, 30), "TIFF"), "image/tiff"),
        # --- decompression bombs: refused from the header ---
        Case("PNG declares 100000x100000", 413, "image_too_large", images.png_bomb_header()),
        Case("PNG declares 1x100000000", 413, "image_too_large", png_with_header(1, 100_000_000)),
        Case("GIF declares 65535x65535", 413, "image_too_large", gif_with_screen(65535, 65535)),
        # --- EXIF garbage and unusual modes: captioned ---
        Case("EXIF garbage", 200, None, jpeg_with_app1(b"Exif\x00\x00" + b"\xa5" * 300, jpeg)),
        Case("EXIF IFD claims 65535 entries", 200, None, jpeg_with_app1(exif_huge_ifd(), jpeg)),
        Case("EXIF orientation 9 (invalid)", 200, None, exif_orientation(9)),
        Case("EXIF orientation 6", 200, None, exif_orientation(6)),
        Case(
            "palette PNG with transparency",
            200,
            None,
            images.encode(palette, "PNG", transparency=3),
        ),
        Case("16-bit PNG", 200, None, images.png_16bit(), "image/png"),
        Case("1-bit PNG", 200, None, images.encode(Image.new("1", (33, 17), 1), "PNG")),
        Case("LA PNG", 200, None, images.encode(Image.new("LA", (20, 20), (90, 10)), "PNG")),
        # --- polyglots ---
        Case("JPEG + ZIP appended", 200, None, jpeg + b"PK\x03\x04" + b"\x00" * 200),
        Case("GIF + script (GIFAR)", 200, None, gif + b"<script>alert(1)</script>", "image/gif"),
        Case(
            "HTML with PNG magic",
            422,
            "invalid_image",
            b"\x89PNG\r\n\x1a\n<html><script>x</script>",
        ),
        # --- base64 and JSON ---
        Case(
            "invalid base64", 400, "invalid_base64", b'{"image_base64": "@@@@"}', "application/json"
        ),
        Case(
            "base64 bad padding",
            400,
            "invalid_base64",
            b'{"image_base64": "abc"}',
            "application/json",
        ),
        Case(
            "base64 not a string",
            400,
            "invalid_base64",
            b'{"image_base64": 12}',
            "application/json",
        ),
        Case(
            "base64 of text",
            422,
            "invalid_image",
            json.dumps({"image_base64": base64.b64encode(b"hello").decode()}).encode(),
            "application/json",
        ),
        Case("oversized JSON", 413, "payload_too_large", oversized, "application/json"),
        Case("deeply nested JSON", 400, "invalid_json", nested, "application/json"),
        Case("5000-digit integer option", 400, "invalid_json", big_number, "application/json"),
        Case(
            "NaN option",
            400,
            "invalid_option",
            b'{"image_base64": "' + b64.encode() + b'", "beam_size": NaN}',
            "application/json",
        ),
        Case(
            "JSON not UTF-8",
            400,
            "invalid_json",
            b'{"image_base64": "\xff\xfe"}',
            "application/json",
        ),
        Case("JSON null", 400, "invalid_json", b"null", "application/json"),
        Case(
            "batch images not a list",
            400,
            "missing_image",
            b'{"images": {"url": 1}}',
            "application/json",
            "/caption/batch",
        ),
        Case(
            "batch nested JSON",
            400,
            "invalid_json",
            b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "application/json",
            "/caption/batch",
        ),
        Case(
            "batch oversized",
            413,
            "payload_too_large",
            b'{"images": []' + b" " * (max_batch_body_bytes + 1) + b"}",
            "application/json",
            "/caption/batch",
        ),
        # --- content types ---
        Case("text/plain", 415, "unsupported_media_type", jpeg, "text/plain"),
        Case("application/xml", 415, "unsupported_media_type", b"<a/>", "application/xml"),
        Case("no content type", 415, "unsupported_media_type", jpeg, None),
        Case(
            "form-urlencoded",
            415,
            "unsupported_media_type",
            b"image=abc",
            "application/x-www-form-urlencoded",
        ),
        Case("image/png holding a JPEG", 200, None, jpeg, "image/png"),
        # --- multipart ---
        Case("multipart ok", 200, None, form_ok, form_ct),
        Case("multipart without boundary", 400, "bad_request", form_ok, "multipart/form-data"),
        Case(
            "multipart wrong boundary",
            400,
            "bad_request",
            form_ok,
            "multipart/form-data; boundary=other",
        ),
        Case(
            "multipart truncated",
            422,
            "invalid_image",
            form_ok[: len(form_ok) // 2],
            form_ct,
        ),
        Case(
            "multipart no closing boundary", 400, "bad_request", form_ok[:-12], form_ct, ok_or=True
        ),
        Case(
            "multipart part without headers",
            400,
            "missing_image",
            b"--xYzZY\r\n\r\n" + jpeg + b"\r\n--xYzZY--\r\n",
            form_ct,
        ),
        Case(
            "multipart 100k-character header",
            400,
            "bad_request",
            multipart([("X-Junk: " + "a" * 100_000, jpeg)])[0],
            form_ct,
        ),
    ]
    return cases
