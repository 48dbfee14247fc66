"""Request bodies for POST /caption, built once per image so the generator spends no CPU on them.

Four payload kinds, the four ways a client can send an image:

    upload  multipart/form-data, field ``image``
    raw     the JPEG bytes as the body, ``Content-Type: image/jpeg``
    base64  JSON ``{"image_base64": "..."}``
    url     JSON ``{"url": "http://127.0.0.1:PORT/NAME"}`` (served by ``static_server``)

The default images are the shared Flickr8k *test* images (the split file filters the folder), found
at ``<repo root>/../shared/data/flickr8k`` or ``$CAPTION_DATA_DIR``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PayloadKind = Literal["upload", "raw", "base64", "url"]
PAYLOAD_KINDS: tuple[PayloadKind, ...] = ("upload", "raw", "base64", "url")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
_BOUNDARY = "captioner-loadtest-7d1f0c"
REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``$CAPTION_DATA_DIR`` or ``<repo root>/../shared/data/flickr8k``."""
    env = os.environ.get("CAPTION_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "flickr8k"


def find_images(images: Path | None = None, *, limit: int | None = None) -> list[Path]:
    """Image files to send, sorted by name.

    ``images`` is a folder of images, or a Flickr8k folder (with ``images/`` and the split files),
    in which case only the official test images are used. ``None`` means the default data folder.
    """
    folder = default_data_dir() if images is None else Path(images)
    split = folder / "Flickr_8k.testImages.txt"
    if (folder / "images").is_dir() and split.is_file():
        names = [line.strip() for line in split.read_text().splitlines() if line.strip()]
        paths = [folder / "images" / n for n in names if (folder / "images" / n).is_file()]
    elif folder.is_dir():
        paths = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths.sort()
    if not paths:
        raise FileNotFoundError(f"no images in {folder}")
    return paths[:limit] if limit else paths


@dataclass(frozen=True)
class PreparedRequest:
    """One ready-to-send POST /caption: the body bytes and headers, never rebuilt per send."""

    name: str
    content: bytes
    headers: dict[str, str]


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return "image/jpeg" if suffix in ("jpg", "jpeg") else f"image/{suffix}"


def multipart_body(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A one-part multipart/form-data body and its Content-Type header."""
    head = (
        f"--{_BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{_BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={_BOUNDARY}"


def prepare(path: Path, kind: PayloadKind, *, url_base: str | None = None) -> PreparedRequest:
    """Build the request body for one image and one payload kind."""
    if kind == "url":
        if not url_base:
            raise ValueError("payload 'url' needs url_base (a static server serving the images)")
        body = json.dumps({"url": f"{url_base.rstrip('/')}/{path.name}"}).encode()
        return PreparedRequest(path.name, body, {"Content-Type": "application/json"})
    data = path.read_bytes()
    if kind == "upload":
        body, ctype = multipart_body("image", path.name, data, _content_type(path))
        return PreparedRequest(path.name, body, {"Content-Type": ctype})
    if kind == "raw":
        return PreparedRequest(path.name, data, {"Content-Type": _content_type(path)})
    if kind == "base64":
        body = json.dumps({"image_base64": base64.b64encode(data).decode("ascii")}).encode()
        return PreparedRequest(path.name, body, {"Content-Type": "application/json"})
    raise ValueError(f"unknown payload kind {kind!r}; choose from {PAYLOAD_KINDS}")


class PayloadPool:
    """Prepared requests for a set of images, handed out round-robin (thread- and task-safe)."""

    def __init__(self, requests: Sequence[PreparedRequest]) -> None:
        if not requests:
            raise ValueError("PayloadPool needs at least one request")
        self.requests = tuple(requests)
        self._cycle: Iterator[PreparedRequest] = itertools.cycle(self.requests)

    @classmethod
    def from_images(
        cls, paths: Sequence[Path], kind: PayloadKind, *, url_base: str | None = None
    ) -> PayloadPool:
        return cls([prepare(p, kind, url_base=url_base) for p in paths])

    def next(self) -> PreparedRequest:
        return next(self._cycle)

    def __len__(self) -> int:
        return len(self.requests)
