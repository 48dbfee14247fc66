"""HTTP endpoints: ``/caption``, ``/caption/batch``, health, readiness, metrics, the web page."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from service.attention import caption_with_attention, grid_shape
from service.decoding import DecodeRequest
from service.errors import (
    CaptionError,
    ClientClosedRequest,
    DeadlineExceeded,
    InvalidOption,
    UrlTimeout,
)
from service.inputs import (
    ImageInput,
    OptionRules,
    Options,
    parse_batch_request,
    parse_caption_request,
)
from service.batch_runner import CaptionJob
from service.state import ServiceState
from service.urlfetch import fetch_image

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")

router = APIRouter()


async def get_state(request: Request) -> ServiceState:
    """(async: a plain ``def`` dependency would cost a thread-pool hop per request)"""
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


# --- response schemas (documentation in /docs; handlers build plain dicts for speed) -----------
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


# --- the caption path ----------------------------------------------------------------------
def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


async def _fetch(state: ServiceState, url: str) -> bytes:
    assert state.http is not None
    start = time.perf_counter()
    try:
        async with state.fetch_slots:
            fetched = await fetch_image(url, state.fetch_policy, state.http)
    finally:
        state.metrics.url_fetch.observe(time.perf_counter() - start)
    return fetched.data


async def caption_one(
    state: ServiceState,
    image: ImageInput,
    options: Options,
    *,
    deadline: float,
    arrived: float,
    request_id: str,
    progress: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """One image through fetch, decode, the batcher and the model; the response object.

    ``progress["queued"]`` turns true once the image is handed to the batcher (which from then
    on accounts for its cancellation)."""
    assert state.preprocessor is not None and state.batcher is not None
    assert state.model is not None
    manifest = state.model.manifest
    if options.attention and manifest.decoder.attention_output is None:
        raise InvalidOption(
            f"attention=true needs an attention decoder; model {manifest.name!r} "
            f"({manifest.decoder.architecture}) has none"
        )
    try:
        async with asyncio.timeout_at(deadline):
            data = image.data if image.data is not None else await _fetch(state, str(image.url))
            pixels, preprocess_s = await state.preprocessor(data)
    except TimeoutError:
        state.metrics.rejected_item("timeout")
        raise DeadlineExceeded("no answer within the request deadline") from None
    state.metrics.preprocess.observe(preprocess_s)
    request = DecodeRequest(
        beam_size=options.beam_size,
        max_length=options.max_length,
        num_captions=options.num_captions,
        length_penalty=state.settings.length_penalty,
    )
    job = CaptionJob(pixels=pixels, request=request, enqueued=time.perf_counter())
    if progress is not None:
        progress["queued"] = True
    outcome = await state.batcher.submit(job, deadline=deadline)
    captions = outcome.captions
    texts = [{"text": c.text, "score": round(c.score, 6)} for c in captions]
    extra: dict[str, Any] = {}
    if options.attention:
        texts = [caption_with_attention(c, t) for c, t in zip(captions, texts, strict=True)]
        extra["attention_grid"] = grid_shape(manifest.encoder.grid_size or 1)
    return {
        "caption": captions[0].text if captions else "",
        "captions": texts,
        "model": {"name": manifest.name, "version": manifest.version},
        "timings_ms": {
            "queue": _ms(outcome.queue_s),
            "preprocess": _ms(preprocess_s),
            "encode": _ms(outcome.encode_s),
            "decode": _ms(outcome.decode_s),
            "total": _ms(time.perf_counter() - arrived),
        },
        "request_id": request_id,
        **extra,
    }


def _count_rejection(state: ServiceState, exc: CaptionError) -> None:
    """Client-caused refusals by reason (the batcher counts its own: queue_full, timeout...)."""
    if isinstance(exc, UrlTimeout) or exc.code.startswith("url_"):
        state.metrics.rejected_item("url")
    elif exc.status_code == 413:
        state.metrics.rejected_item("too_large")
    elif isinstance(exc, ClientClosedRequest):
        return  # counted as "cancelled" where the work was dropped (here or in the batcher)
    elif 400 <= exc.status_code < 500:
        state.metrics.rejected_item("invalid")


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(
    request: Request, work: asyncio.Future[Any], on_cancel: Callable[[], None] | None = None
) -> Any:
    """Await ``work``; cancel it if the client goes away first (its batch item is skipped)."""
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()  # the handler itself is cancelled (server shutting down): no orphans
        raise
    finally:
        watcher.cancel()
    if not work.done():
        work.cancel()
        if on_cancel is not None:
            on_cancel()
        raise ClientClosedRequest("the client disconnected; the request was cancelled")
    return work.result()


@contextlib.asynccontextmanager
async def _body_deadline(deadline: float) -> AsyncIterator[None]:
    """A client that trickles its body is cut off at the request deadline (504)."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        raise DeadlineExceeded("the request body did not arrive within the deadline") from None


def _deadline(state: ServiceState) -> tuple[float, float]:
    """(loop deadline, perf_counter arrival)."""
    return (
        asyncio.get_running_loop().time() + state.settings.request_timeout_s,
        time.perf_counter(),
    )


@router.post(
    "/caption",
    response_model=CaptionResponse,
    responses=ERRORS,
    openapi_extra=CAPTION_BODY,
    summary="Caption one image (multipart, raw bytes, JSON url or JSON base64)",
)
async def caption(request: Request, state: StateDep) -> Response:
    state.check_ready()
    deadline, arrived = _deadline(state)
    request_id: str = request.state.request_id
    async with state.admitted():
        try:
            assert state.rules is not None
            async with _body_deadline(deadline):
                image, options = await parse_caption_request(
                    request, state.rules, max_upload_bytes=state.settings.max_upload_bytes
                )
            progress: dict[str, bool] = {}
            work = asyncio.ensure_future(
                caption_one(
                    state,
                    image,
                    options,
                    deadline=deadline,
                    arrived=arrived,
                    request_id=request_id,
                    progress=progress,
                )
            )

            def cancelled_before_queue() -> None:
                if not progress.get("queued"):
                    state.metrics.rejected_item("cancelled")

            result = await _unless_disconnected(request, work, cancelled_before_queue)
        except CaptionError as exc:
            _count_rejection(state, exc)
            raise
    request.state.timings_ms = result["timings_ms"]
    return JSONResponse(result)


async def _batch_item(
    state: ServiceState,
    item: ImageInput | CaptionError,
    options: Options,
    *,
    deadline: float,
    arrived: float,
    request_id: str,
) -> dict[str, Any]:
    try:
        if isinstance(item, CaptionError):
            raise item
        return await caption_one(
            state, item, options, deadline=deadline, arrived=arrived, request_id=request_id
        )
    except CaptionError as exc:
        _count_rejection(state, exc)
        return {"error": exc.to_dict(), "status": exc.status_code}
    except Exception:
        log.exception("batch item failed unexpectedly")
        return {"error": {"detail": "internal error", "code": "internal"}, "status": 500}


@router.post(
    "/caption/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    openapi_extra=BATCH_BODY,
    summary="Caption up to CAPTION_BATCH_MAX_ITEMS images given as URLs or base64",
)
async def caption_batch(request: Request, state: StateDep) -> Response:
    state.check_ready()
    deadline, arrived = _deadline(state)
    request_id: str = request.state.request_id
    settings = state.settings
    assert state.rules is not None
    try:
        async with _body_deadline(deadline):
            items, options = await parse_batch_request(
                request,
                state.rules,
                max_body_bytes=settings.max_batch_body_bytes,
                max_items=settings.batch_max_items,
                max_upload_bytes=settings.max_upload_bytes,
            )
    except CaptionError as exc:
        _count_rejection(state, exc)
        raise
    async with state.admitted(len(items)):
        work = asyncio.ensure_future(
            asyncio.gather(
                *(
                    _batch_item(
                        state,
                        item,
                        options,
                        deadline=deadline,
                        arrived=arrived,
                        request_id=request_id,
                    )
                    for item in items
                )
            )
        )
        results = await _unless_disconnected(request, work)
    return JSONResponse({"results": results})


# --- operations ------------------------------------------------------------------------------
@router.get("/healthz", summary="Liveness: the process answers")
async def healthz(state: StateDep) -> Response:
    if state.phase == "failed":
        return JSONResponse({"status": "failed", "detail": state.failure}, status_code=500)
    return JSONResponse({"status": "alive"})


@router.get("/readyz", summary="Readiness: model loaded and warm, not draining")
async def readyz(state: StateDep) -> Response:
    body: dict[str, Any] = {"status": state.phase, "ready": state.ready}
    if state.model is not None:
        manifest = state.model.manifest
        body["model"] = {"name": manifest.name, "version": manifest.version}
        body["attention_maps"] = manifest.decoder.attention_output is not None  # attention=true
        body["provider"] = state.model.provider
    if state.ready:
        return JSONResponse(body)
    body.update(code="not_ready", detail=f"service is {state.phase}")
    if state.failure:
        body["detail"] = state.failure
    headers = {"Retry-After": str(state.settings.retry_after_s)}
    return JSONResponse(body, status_code=503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> Response:
    page = STATIC / "index.html"
    if page.is_file():
        return HTMLResponse(page.read_text(encoding="utf-8"))
    return HTMLResponse(
        "<!doctype html><title>captioner</title><p>POST an image to <code>/caption</code>; "
        'see <a href="/docs">/docs</a>.</p>'
    )


__all__ = ["router", "OptionRules"]
