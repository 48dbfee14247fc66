"""``create_app(settings)``: the FastAPI application (routes, errors, middleware, lifespan)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import CaptionError
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.model import CaptionModel
from service.routes import router
from service.security import install_security
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger(__name__)

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _error(request: Request, status: int, detail: str, code: str, **headers: str) -> JSONResponse:
    request.state.error_code = code
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def _caption_error(metrics: Metrics) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CaptionError)  # registered for CaptionError only
        metrics.count_rejection(exc)
        if exc.status_code >= 500 and exc.code == "internal":
            log.error("internal error: %s", exc.detail)
        return _error(request, exc.status_code, exc.detail, exc.code, **exc.headers)

    return handle


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _error(request, 422, str(exc.errors()), "invalid_request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return _error(request, exc.status_code, str(exc.detail), code, **(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _error(request, 500, "internal error", "internal")


def create_app(
    settings: Settings | None = None,
    *,
    model: CaptionModel | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The service app. ``model`` skips loading (``python -m service`` loads it first to fail
    fast on a bad bundle); ``registry`` isolates metrics (tests)."""
    settings = settings or Settings()
    metrics = Metrics(registry or CollectorRegistry())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(settings, metrics, model)
        app.state.service = state
        state.begin_start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="captioner",
        version="0.1.0",
        summary="Image captioning: CNN encoder + LSTM decoder on ONNX Runtime, micro-batched.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.add_exception_handler(CaptionError, _caption_error(metrics))
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    install_security(app, settings, metrics)  # inside the request context (ids, logs)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.state.metrics = metrics
    app.state.settings = settings
    return app
