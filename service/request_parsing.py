"""Turning an HTTP request into images and decoding options, with limits and clear errors.

``POST /caption`` accepts four forms (chosen by ``Content-Type``):

* ``multipart/form-data`` with a file field ``image`` (options may also be form fields);
* a raw body with ``image/*`` or ``application/octet-stream``;
* JSON ``{"url": "..."}`` or JSON ``{"image_base64": "..."}`` (a ``data:`` URL prefix is allowed).

Options (``beam_size``, ``max_length``, ``num_captions``, and the flag ``attention`` for per-word
attention maps) come from the query string or the JSON object (JSON wins), validated by
``service.options.OptionRules``. Bodies are read as a
stream and refused with 413 as soon as they pass the limit (a ``Content-Length`` above it is
refused before reading anything).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.captioner import ImageUrl
from service.errors import (
    BadRequest,
    BatchTooLarge,
    CaptionError,
    ClientClosedRequest,
    EmptyBody,
    InvalidBase64,
    InvalidJson,
    MissingImage,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from service.options import OPTION_NAMES, CaptionOptions, OptionRules

FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and option fields

ImageSource = bytes | ImageUrl
"""What a request names: the image's bytes, or a URL to fetch."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit} byte limit")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit} byte limit")
    except ClientDisconnect:  # gone mid-body: 499 in logs and metrics, not an unhandled 500
        raise ClientClosedRequest("the client disconnected while sending the body") from None
    return bytes(body)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _multipart(body: bytes, content_type: str) -> tuple[bytes | None, dict[str, str]]:
    """The ``image`` file part and the text fields of a multipart body."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary")
    parts: list[tuple[list[tuple[bytes, bytes]], bytearray]] = []
    header: list[bytes] = [b"", b""]

    def on_part_begin() -> None:
        parts.append(([], bytearray()))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        parts[-1][0].append((header[0].lower(), header[1]))
        header[0], header[1] = b"", b""

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from None
    image: bytes | None = None
    fields: dict[str, str] = {}
    for headers, data in parts:
        disposition = dict(headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "image":
            image = bytes(data)
        elif name in OPTION_NAMES:
            fields[name] = data.decode("utf-8", "replace")
    return image, fields


def decode_base64(text: object, max_bytes: int) -> bytes:
    if not isinstance(text, str):
        raise InvalidBase64("image_base64 must be a string")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    compact = "".join(text.split())
    if len(compact) // 4 * 3 > max_bytes + 3:
        raise PayloadTooLarge(f"the decoded image would exceed the {max_bytes} byte limit")
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64("image_base64 is not valid base64") from None
    if not data:
        raise EmptyBody("image_base64 decodes to 0 bytes")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the image exceeds the {max_bytes} byte limit")
    return data


def image_from_json(item: object, max_bytes: int) -> ImageSource:
    """One ``{"url": ...}`` or ``{"image_base64": ...}`` object."""
    if not isinstance(item, dict):
        raise InvalidJson("each image must be a JSON object with 'url' or 'image_base64'")
    has_url, has_b64 = "url" in item, "image_base64" in item
    if has_url and has_b64:
        raise InvalidJson("give either 'url' or 'image_base64', not both")
    if has_url:
        url = item["url"]
        if not isinstance(url, str) or not url.strip():
            raise InvalidJson("'url' must be a non-empty string")
        return ImageUrl(url.strip())
    if has_b64:
        return decode_base64(item["image_base64"], max_bytes)
    raise MissingImage("the JSON object has neither 'url' nor 'image_base64'")


def _json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise EmptyBody("the request body is empty")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # syntax, encoding, > 4300-digit ints, nesting
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidJson("the JSON body must be an object")
    return value


def _is_json(kind: str) -> bool:
    return kind == "application/json" or kind.endswith("+json")


async def parse_caption_request(
    request: Request, rules: OptionRules, *, max_upload_bytes: int
) -> tuple[ImageSource, CaptionOptions]:
    """``POST /caption``: one image in any accepted form, and its options."""
    kind = media_type(request)
    query = request.query_params
    if kind == "multipart/form-data":
        body = await read_body(request, max_upload_bytes + FORM_OVERHEAD)
        if not body:
            raise EmptyBody("the request body is empty")
        image, fields = _multipart(body, request.headers["content-type"])
        options = rules.parse(query, fields)
        if image is None:
            raise MissingImage("multipart body has no file field named 'image'")
        if not image:
            raise EmptyBody("the uploaded image is empty (0 bytes)")
        if len(image) > max_upload_bytes:
            raise PayloadTooLarge(f"the image exceeds the {max_upload_bytes} byte limit")
        return image, options
    if kind.startswith("image/") or kind == "application/octet-stream":
        options = rules.parse(query)
        body = await read_body(request, max_upload_bytes)
        if not body:
            raise EmptyBody("the request body is empty")
        return body, options
    if _is_json(kind):
        limit = max_upload_bytes * 4 // 3 + FORM_OVERHEAD
        obj = _json_object(await read_body(request, limit))
        unknown = set(obj) - {"url", "image_base64", *OPTION_NAMES}
        if unknown:
            raise InvalidJson(f"unknown fields {sorted(unknown)}")
        options = rules.parse(query, obj)
        return image_from_json(obj, max_upload_bytes), options
    raise UnsupportedMediaType(
        f"Content-Type {kind or '(none)'!r} is not accepted: send multipart/form-data with an "
        "'image' file, a raw image/* or application/octet-stream body, or JSON with "
        "'url' or 'image_base64'"
    )


async def parse_batch_request(
    request: Request,
    rules: OptionRules,
    *,
    max_body_bytes: int,
    max_items: int,
    max_upload_bytes: int,
) -> tuple[list[ImageSource | CaptionError], CaptionOptions]:
    """``POST /caption/batch``: ``{"images": [...], options}``; a bad item is an error in place."""
    kind = media_type(request)
    if not _is_json(kind):
        raise UnsupportedMediaType(
            f"Content-Type {kind or '(none)'!r} is not accepted: send application/json "
            '{"images": [{"url": ...} | {"image_base64": ...}, ...]}'
        )
    obj = _json_object(await read_body(request, max_body_bytes))
    unknown = set(obj) - {"images", *OPTION_NAMES}
    if unknown:
        raise InvalidJson(f"unknown fields {sorted(unknown)}")
    images = obj.get("images")
    if not isinstance(images, list) or not images:
        raise MissingImage("'images' must be a non-empty list")
    if len(images) > max_items:
        raise BatchTooLarge(f"{len(images)} images in one request; the limit is {max_items}")
    options = rules.parse(request.query_params, obj)
    items: list[ImageSource | CaptionError] = []
    for item in images:
        try:
            items.append(image_from_json(item, max_upload_bytes))
        except CaptionError as exc:
            items.append(exc)
    return items, options
