"""HTTP endpoints: ``/caption``, ``/caption/batch``, health, readiness, metrics, the web page.

Each caption handler is parse, then ``Captioner.caption``, then render; the lifecycle
(readiness, admission, drain) is ``ServiceState``'s and refusals are counted in
``count_rejection``, once per image, by whoever answers the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.attention import caption_with_attention
from service.captioner import Captioner, CaptionResult
from service.errors import CaptionError, ClientClosedRequest, DeadlineExceeded
from service.options import CaptionOptions
from service.request_parsing import ImageSource, parse_batch_request, parse_caption_request
from service.schemas import BATCH_BODY, CAPTION_BODY, ERRORS, BatchResponse, CaptionResponse
from service.state import ServiceState

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
T = TypeVar("T")

router = APIRouter()


async def get_state(request: Request) -> ServiceState:
    """(async: a plain ``def`` dependency would cost a thread-pool hop per request)"""
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def render(result: CaptionResult, options: CaptionOptions, request_id: str) -> dict[str, Any]:
    """A ``CaptionResult`` as the JSON body of ``CaptionResponse``."""
    texts: list[dict[str, Any]] = []
    for caption in result.captions:
        text = {"text": caption.text, "score": round(caption.score, 6)}
        texts.append(caption_with_attention(caption, text) if options.attention else text)
    t = result.timings
    timings: dict[str, Any] = {
        "queue": _ms(t.queue_s),
        "preprocess": _ms(t.preprocess_s),
        "encode": _ms(t.encode_s),
        "decode": _ms(t.decode_s),
        "total": _ms(t.total_s),
    }
    if t.cached:
        timings["cached"] = True
    body: dict[str, Any] = {
        "caption": result.caption,
        "captions": texts,
        "model": {"name": result.model.name, "version": result.model.version},
        "timings_ms": timings,
        "request_id": request_id,
    }
    if result.attention_grid is not None:
        body["attention_grid"] = result.attention_grid
    return body


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _deadline(state: ServiceState) -> float:
    return asyncio.get_running_loop().time() + state.settings.request_timeout_s


@contextlib.asynccontextmanager
async def _body_deadline(deadline: float) -> AsyncIterator[None]:
    """A client that trickles its body is cut off at the request deadline (504)."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        raise DeadlineExceeded("the request body did not arrive within the deadline") from None


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it if the client goes away first (its batch items are skipped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()  # the handler itself is cancelled (server shutting down): no orphans
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientClosedRequest("the client disconnected; the request was cancelled")
    return task.result()


@router.post(
    "/caption",
    response_model=CaptionResponse,
    responses=ERRORS,
    openapi_extra=CAPTION_BODY,
    summary="Caption one image (multipart, raw bytes, JSON url or JSON base64)",
)
async def caption(request: Request, state: StateDep) -> Response:
    captioner = state.check_ready()
    deadline = _deadline(state)
    request_id: str = request.state.request_id
    async with state.admitted():
        async with _body_deadline(deadline):
            source, options = await parse_caption_request(
                request, captioner.rules, max_upload_bytes=state.settings.max_upload_bytes
            )
        result = await _unless_disconnected(
            request, captioner.caption(source, options, deadline=deadline)
        )
    body = render(result, options, request_id)
    request.state.timings_ms = body["timings_ms"]
    return JSONResponse(body)


async def _batch_item(
    state: ServiceState,
    captioner: Captioner,
    item: ImageSource | CaptionError,
    options: CaptionOptions,
    *,
    deadline: float,
    request_id: str,
) -> dict[str, Any]:
    try:
        if isinstance(item, CaptionError):
            raise item
        result = await captioner.caption(item, options, deadline=deadline)
        return render(result, options, request_id)
    except CaptionError as exc:
        state.metrics.count_rejection(exc)
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
    captioner = state.check_ready()
    deadline = _deadline(state)
    request_id: str = request.state.request_id
    settings = state.settings
    async with _body_deadline(deadline):
        items, options = await parse_batch_request(
            request,
            captioner.rules,
            max_body_bytes=settings.max_batch_body_bytes,
            max_items=settings.batch_max_items,
            max_upload_bytes=settings.max_upload_bytes,
        )
    async with state.admitted(len(items)):
        work = asyncio.gather(
            *(
                _batch_item(
                    state, captioner, item, options, deadline=deadline, request_id=request_id
                )
                for item in items
            )
        )
        try:
            results = await _unless_disconnected(request, work)
        except ClientClosedRequest as exc:
            exc.images = len(items)  # every image of the request was dropped
            raise
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
    if state.captioner is not None:
        model = state.captioner.model
        body["model"] = {"name": model.manifest.name, "version": model.manifest.version}
        rules = state.captioner.rules
        body["attention_maps"] = rules.attention_maps  # attention=true
        body["defaults"] = {  # what a request that names no option gets
            "beam_size": rules.default_beam_size,
            "max_length": rules.default_max_length,
            "num_captions": min(rules.default_num_captions, rules.default_beam_size),
        }
        body["provider"] = model.provider
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
