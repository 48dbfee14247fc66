"""Response schemas and OpenAPI request bodies of the caption endpoints (for ``/docs``).

Handlers build plain dicts for speed; these models document the shapes and are kept honest by
the OpenAPI fuzz tests.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class CaptionText(BaseModel):
    text: str
    score: float
    words: list[str] | None = None
    """With ``attention=true``: the words of ``text``, one per ``attention`` row."""
    attention: list[list[float]] | None = None
    """With ``attention=true``: per word, its weights over the ``attention_grid`` cells
    (row-major, each row sums to 1)."""


class ModelRef(BaseModel):
    name: str
    version: str


class Timings(BaseModel):
    queue: float
    preprocess: float
    encode: float
    decode: float
    total: float
    cached: bool | None = None
    """True when the answer came from the response cache (``CAPTION_CACHE_SIZE``) or joined an
    identical request in flight; the stages then read 0."""


class CaptionResponse(BaseModel):
    caption: str
    captions: list[CaptionText]
    model: ModelRef
    timings_ms: Timings
    request_id: str
    attention_grid: list[int] | None = None
    """With ``attention=true``: [rows, cols] of the grid the attention weights cover."""


class ErrorBody(BaseModel):
    detail: str
    code: str


class ItemError(BaseModel):
    error: ErrorBody
    status: int


class BatchResponse(BaseModel):
    results: list[CaptionResponse | ItemError]


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "bad options or JSON (invalid_option, invalid_json, invalid_base64, missing_image)",
        403: "URL destination refused (url_forbidden)",
        413: "upload, image or batch too large",
        415: "unsupported Content-Type",
        422: "not a readable image (invalid_image, empty_body)",
        502: "URL fetch failed",
        503: "overloaded (queue full) or not ready; see Retry-After",
        504: "deadline exceeded or URL timeout",
    }.items()
}

CAPTION_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "url": {"type": "string"},
                        "image_base64": {"type": "string"},
                        "beam_size": {"type": "integer"},
                        "max_length": {"type": "integer"},
                        "num_captions": {"type": "integer"},
                        "attention": {"type": "boolean"},
                    },
                }
            },
        },
    },
    "parameters": [
        *(
            {"name": name, "in": "query", "required": False, "schema": {"type": "integer"}}
            for name in ("beam_size", "max_length", "num_captions")
        ),
        {"name": "attention", "in": "query", "required": False, "schema": {"type": "boolean"}},
    ],
}


BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "url": {"type": "string"},
                                    "image_base64": {"type": "string"},
                                },
                            },
                        },
                        "beam_size": {"type": "integer"},
                        "max_length": {"type": "integer"},
                        "num_captions": {"type": "integer"},
                        "attention": {"type": "boolean"},
                    },
                    "required": ["images"],
                }
            }
        },
    },
    "parameters": CAPTION_BODY["parameters"],
}
