"""Who may call the service, how often, from which web origins, and the page's security headers.

Three plain ASGI middlewares, all configured from ``Settings`` and installed by
``install_security(app, settings, metrics)`` (outermost first: CORS, security headers, access):

* ``AccessMiddleware``: optional API keys (``CAPTION_API_KEYS``, comma-separated; sent as
  ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; else 401 ``unauthorized``) and an
  optional per-client token bucket (``CAPTION_RATE_LIMIT_PER_S`` tokens a second, up to
  ``CAPTION_RATE_LIMIT_BURST``; one token a request; else 429 ``rate_limited`` with
  ``Retry-After``). The client is its API key when keys are on, else its IP address (behind a
  proxy: uvicorn's ``FORWARDED_ALLOW_IPS`` decides whether ``X-Forwarded-For`` is believed).
  Paths in ``CAPTION_PUBLIC_PATHS`` (probes and ``/metrics`` by default) skip both. Both are off
  by default.
* Starlette's ``CORSMiddleware`` when ``CAPTION_CORS_ORIGINS`` lists origins (off by default:
  browsers then only allow same-origin calls, which is what the bundled page makes).
* ``SecurityHeadersMiddleware``: ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
  no-referrer`` and ``X-Frame-Options: DENY`` on every answer; on HTML answers a
  ``Content-Security-Policy`` that allows the page's own inline ``<script>``/``<style>`` by their
  SHA-256 hashes (computed from the page at start-up, so editing the page needs no edit here) and
  nothing else inline, with ``frame-ancestors 'none'``.

Refusals are rendered like every other error (``{"detail", "code"}``) and counted in
``caption_rejected_total{reason="unauthorized"|"rate_limited"}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import CaptionError, RateLimited, Unauthorized
from service.metrics import Metrics
from service.settings import Settings

PAGE = Path(__file__).with_name("static") / "index.html"
MAX_BUCKETS = 10_000  # distinct clients remembered by the rate limiter (least recent evicted)

_INLINE = re.compile(r"<(script|style)(?:\s[^>]*)?>(.*?)</\1\s*>", re.DOTALL | re.IGNORECASE)


# --- rate limiting ---------------------------------------------------------------------------
class TokenBucketLimiter:
    """Per-client token buckets: ``rate`` tokens a second, at most ``burst`` saved up.

    ``take(client)`` returns 0.0 when the request may go ahead, else the seconds until a token
    will be there. Memory is bounded: past ``max_clients`` the least recently seen client is
    forgotten (it starts again with a full bucket, which only errs towards letting it in)."""

    def __init__(self, rate: float, burst: int, *, max_clients: int = MAX_BUCKETS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            wait, tokens = 0.0, tokens - 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


# --- authentication ------------------------------------------------------------------------
def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, if any."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


def key_id(key: str) -> str:
    """A short non-secret name for a key (rate-limit bucket, logs): a hash prefix."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


async def send_error(send: Send, exc: CaptionError, scope: Scope) -> None:
    """Render ``exc`` as the service's JSON error answer, straight on the ASGI channel."""
    scope.setdefault("state", {})["error_code"] = exc.code
    body = json.dumps(exc.to_dict()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AccessMiddleware:
    """API-key check, then the per-client rate limit; public paths and CORS preflights skip."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.keys = [k.encode() for k in settings.api_key_list]
        self.public = frozenset(settings.public_path_list)
        self.limiter = (
            TokenBucketLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
            if settings.rate_limit_per_s > 0
            else None
        )

    def _valid(self, key: str) -> bool:
        candidate = key.encode()
        found = False
        for known in self.keys:  # compare with every key: time does not tell which matched
            found |= hmac.compare_digest(candidate, known)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in self.public
            or scope["method"] == "OPTIONS"  # CORS preflights carry no credentials
        ):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        if self.keys:
            key = presented_key(scope.get("headers", []))
            if key is None or not self._valid(key):
                self.metrics.rejected_item("unauthorized")
                detail = "missing API key" if key is None else "invalid API key"
                denied = Unauthorized(
                    f"{detail}: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                    headers={"WWW-Authenticate": 'Bearer realm="captioner"'},
                )
                await send_error(send, denied, scope)
                return
            client = key_id(key)
        if self.limiter is not None:
            wait = self.limiter.take(client)
            if wait > 0:
                self.metrics.rejected_item("rate_limited")
                retry = max(1, math.ceil(wait))
                limited = RateLimited(
                    f"rate limit of {self.limiter.rate:g} requests/s exceeded; retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )
                await send_error(send, limited, scope)
                return
        await self.app(scope, receive, send)


# --- security headers ----------------------------------------------------------------------
def inline_hashes(html: str) -> tuple[list[str], list[str]]:
    """CSP source expressions (``'sha256-...'``) of the inline scripts and styles of ``html``."""
    scripts: list[str] = []
    styles: list[str] = []
    for tag, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        (scripts if tag.lower() == "script" else styles).append(f"'sha256-{digest}'")
    return scripts, styles


def page_csp(html: str) -> str:
    """The Content-Security-Policy of the web page: only its own inline code, same-origin API
    calls, previews of uploaded files (``blob:``) and of image URLs the user typed."""
    scripts, styles = inline_hashes(html)
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(scripts) or "'none'"),
            "style-src " + (" ".join(styles) or "'none'"),
            "img-src 'self' blob: data: https: http:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeadersMiddleware:
    """Adds the common headers to every answer and the page's CSP to HTML answers."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.csp = csp.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        html_page = scope["path"] == "/"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [h for h in COMMON_HEADERS if h[0] not in present]
                if html_page and b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", self.csp))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_security(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Add the middlewares (call before the request-context middleware, which stays outermost)."""
    app.add_middleware(AccessMiddleware, settings=settings, metrics=metrics)
    html = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else ""
    app.add_middleware(SecurityHeadersMiddleware, csp=page_csp(html))
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origin_list),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
