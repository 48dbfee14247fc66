"""Every error a client can cause, with its HTTP status and a stable machine-readable ``code``.

    CaptionError (500, internal)
    ├── BadRequest (400, bad_request)
    │   ├── InvalidOption (400, invalid_option)
    │   ├── InvalidBase64 (400, invalid_base64)
    │   ├── InvalidJson (400, invalid_json)              body is not the JSON object expected
    │   └── MissingImage (400, missing_image)            no image field / url / image_base64
    ├── Unauthorized (401, unauthorized)
    ├── UrlForbidden (403, url_forbidden)
    ├── PayloadTooLarge (413, payload_too_large)
    │   ├── ImageTooLarge (413, image_too_large)        decoded pixel count over the limit
    │   ├── BatchTooLarge (413, batch_too_large)
    │   └── UrlTooLarge (413, url_too_large)
    ├── UnsupportedMediaType (415, unsupported_media_type)
    ├── UnprocessableImage (422, invalid_image)
    │   └── EmptyBody (422, empty_body)
    ├── RateLimited (429, rate_limited)
    ├── ClientClosedRequest (499, client_closed)      the client went away; nobody reads it
    ├── UrlFetchFailed (502, url_fetch_failed)
    ├── Overloaded (503, overloaded)                    carries Retry-After
    ├── NotReady (503, not_ready)
    ├── UrlTimeout (504, url_timeout)
    └── DeadlineExceeded (504, deadline_exceeded)

The app renders any of them as ``{"detail": ..., "code": ...}`` with the status code. ``reason``
is the label under which ``caption_rejected_total`` counts a refusal (None: not a refusal).
"""

from __future__ import annotations

from typing import ClassVar


class CaptionError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    reason: str | None = None
    """``caption_rejected_total`` label; a class default that an instance may narrow."""
    images: int = 1
    """How many images the refusal covers (a whole ``/caption/batch`` request: all of them)."""

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    def to_dict(self) -> dict[str, str]:
        return {"detail": self.detail, "code": self.code}


class BadRequest(CaptionError):
    status_code = 400
    code = "bad_request"
    reason = "invalid"


class InvalidOption(BadRequest):
    code = "invalid_option"


class InvalidBase64(BadRequest):
    code = "invalid_base64"


class InvalidJson(BadRequest):
    code = "invalid_json"


class MissingImage(BadRequest):
    code = "missing_image"


class Unauthorized(CaptionError):
    status_code = 401
    code = "unauthorized"
    reason = "unauthorized"


class UrlForbidden(CaptionError):
    status_code = 403
    code = "url_forbidden"
    reason = "url"


class PayloadTooLarge(CaptionError):
    status_code = 413
    code = "payload_too_large"
    reason = "too_large"


class ImageTooLarge(PayloadTooLarge):
    code = "image_too_large"


class BatchTooLarge(PayloadTooLarge):
    code = "batch_too_large"


class UrlTooLarge(PayloadTooLarge):
    code = "url_too_large"
    reason = "url"


class UnsupportedMediaType(CaptionError):
    status_code = 415
    code = "unsupported_media_type"
    reason = "invalid"


class UnprocessableImage(CaptionError):
    status_code = 422
    code = "invalid_image"
    reason = "invalid"


class EmptyBody(UnprocessableImage):
    code = "empty_body"


class RateLimited(CaptionError):
    status_code = 429
    code = "rate_limited"
    reason = "rate_limited"


class ClientClosedRequest(CaptionError):
    status_code = 499
    code = "client_closed"
    reason = "cancelled"


class UrlFetchFailed(CaptionError):
    status_code = 502
    code = "url_fetch_failed"
    reason = "url"


class Overloaded(CaptionError):
    status_code = 503
    code = "overloaded"
    reason = "queue_full"

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_s))})


class NotReady(CaptionError):
    status_code = 503
    code = "not_ready"
    reason = "not_ready"

    def __init__(
        self,
        detail: str = "service is not ready",
        *,
        retry_after_s: int = 1,
        draining: bool = False,
    ) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_s))})
        if draining:
            self.reason = "draining"


class UrlTimeout(CaptionError):
    status_code = 504
    code = "url_timeout"
    reason = "url"


class DeadlineExceeded(CaptionError):
    status_code = 504
    code = "deadline_exceeded"
    reason = "timeout"
