"""ASGI middleware: request id, one JSON access line per request, request metrics.

A plain ASGI middleware (not ``BaseHTTPMiddleware``) so the endpoint's ``receive`` stays the
server's own (client disconnects are seen) and nothing is buffered.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import accept_request_id, request_id_var
from service.metrics import Metrics

access_log = logging.getLogger("service.access")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                header = value.decode("latin-1")
                break
        request_id = accept_request_id(header)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(endpoint=endpoint, code=str(status[0])).inc()
            self.metrics.request_duration.labels(endpoint=endpoint).observe(elapsed)
            level = logging.DEBUG if endpoint in QUIET_PATHS and status[0] < 500 else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(
                    level,
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status[0],
                        "code": state.get("error_code", "ok" if status[0] < 400 else None),
                        "duration_ms": round(elapsed * 1000, 3),
                        "timings_ms": state.get("timings_ms"),
                        "client": (scope.get("client") or ("", 0))[0],
                    },
                )
            request_id_var.reset(token)
