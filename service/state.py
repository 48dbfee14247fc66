"""The running service: model, batcher, pools, URL client, readiness and draining.

Life cycle: ``start()`` (in the app's lifespan) loads the bundle if it was not given, warms up
every batch-size bucket in a worker thread while ``/healthz`` already answers and ``/readyz``
says 503 ``starting``, then turns ready. ``drain()`` (SIGTERM or lifespan shutdown) turns
``/readyz`` 503 ``draining``, refuses new work with 503 ``not_ready``, waits up to
``drain_timeout_s`` for every accepted request to be answered, then stops the batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Literal

import httpx

from service.batcher import MicroBatcher
from service.errors import NotReady, Overloaded
from service.inputs import OptionRules
from service.metrics import BatcherMetrics, Metrics
from service.batch_runner import CaptionJob, CaptionOutcome, BatchRunner
from service.preprocess import Preprocessor
from service.model import CaptionModel
from service.settings import Settings
from service.urlfetch import FetchPolicy, build_client

log = logging.getLogger(__name__)

Phase = Literal["starting", "ready", "draining", "stopped", "failed"]


class ServiceState:
    def __init__(
        self, settings: Settings, metrics: Metrics, model: CaptionModel | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model = model
        self.phase: Phase = "starting"
        self.failure: str | None = None
        self.fetch_policy = FetchPolicy.from_settings(settings)
        self.fetch_slots = asyncio.Semaphore(settings.url_fetch_concurrency)
        self.pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._start_task: asyncio.Task[None] | None = None
        self._drained: asyncio.Task[bool] | None = None
        # built by start()
        self.rules: OptionRules | None = None
        self.preprocessor: Preprocessor | None = None
        self.pipeline: BatchRunner | None = None
        self.batcher: MicroBatcher[CaptionJob, CaptionOutcome] | None = None
        self.http: httpx.AsyncClient | None = None

    # --- start ---------------------------------------------------------------------------
    def begin_start(self) -> None:
        """Load and warm up in the background; the server answers meanwhile."""
        self._start_task = asyncio.get_running_loop().create_task(self._start(), name="warm-up")

    async def wait_started(self) -> None:
        if self._start_task is not None:
            await asyncio.shield(self._start_task)

    async def _start(self) -> None:
        s = self.settings
        try:
            if self.model is None:
                self.model = await asyncio.to_thread(
                    CaptionModel.load,
                    s.bundle_dir,
                    provider=s.provider,
                    intra_op_threads=s.threads_per_batch,
                    inter_op_threads=s.inter_op_threads,
                    use_int8=s.use_int8,
                )
            model = self.model
            await asyncio.to_thread(model.warm_up, s.warmup_sizes, beam_size=s.default_beam_size)
        except Exception as exc:
            self.phase, self.failure = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("model start-up failed")
            return
        max_steps = model.max_steps
        self.rules = OptionRules(
            default_beam_size=s.default_beam_size,
            max_beam_size=s.max_beam_size,
            default_max_length=min(s.default_max_length or max_steps, max_steps),
            max_max_length=max_steps,
            default_num_captions=s.default_num_captions,
        )
        self.preprocessor = Preprocessor(
            model.preprocessing, max_pixels=s.max_image_pixels, threads=s.decode_threads
        )
        self.pipeline = BatchRunner(
            model, self.metrics, threads=s.max_concurrent_batches, nice=s.model_thread_nice
        )
        self.batcher = MicroBatcher(
            self.pipeline,
            max_batch_size=s.max_batch_size,
            max_wait_s=s.max_wait_ms / 1000.0,
            queue_size=s.queue_size,
            max_concurrent_batches=s.max_concurrent_batches,
            retry_after_s=s.retry_after_s,
            observer=BatcherMetrics(self.metrics),
        )
        self.batcher.start()
        self.http = build_client(self.fetch_policy)
        _freeze_long_lived()
        manifest = model.manifest
        self.metrics.set_model(manifest.name, manifest.version, model.provider)
        if self.phase == "starting":
            self.phase = "ready"
            self.metrics.ready.set(1)
            log.info(
                "ready",
                extra={
                    "model": manifest.name,
                    "version": manifest.version,
                    "provider": model.provider,
                    "warmup_batch_sizes": s.warmup_sizes,
                },
            )

    # --- admission -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    def check_ready(self) -> None:
        if self.phase == "ready":
            return
        reason = "draining" if self.phase in ("draining", "stopped") else "not_ready"
        self.metrics.rejected_item(reason)
        detail = {
            "starting": "the model is still loading and warming up",
            "draining": "the service is shutting down",
            "stopped": "the service is shutting down",
            "failed": f"the model failed to start: {self.failure}",
        }.get(self.phase, "not ready")
        raise NotReady(detail, retry_after_s=self.settings.retry_after_s)

    @property
    def max_pending(self) -> int:
        """Images that may be accepted and unanswered at once: the queue, the running batches
        and one per decode thread. (Counting more would let requests in that can only be
        decoded and then refused at the full queue: the expensive way to say 503.)"""
        s = self.settings
        return s.queue_size + s.max_batch_size * s.max_concurrent_batches + s.decode_threads

    @contextlib.asynccontextmanager
    async def admitted(self, count: int = 1) -> AsyncIterator[None]:
        """Count ``count`` images as pending while the block runs (the HPA metric).

        Beyond ``max_pending`` the request is refused at once with 503 ``overloaded``, before
        its body is read or decoded: under overload, refusing must cost next to nothing (an
        idle service still takes a batch larger than the limit)."""
        if self.pending and self.pending + count > self.max_pending:
            self.metrics.rejected_item("queue_full")
            raise Overloaded(
                f"{self.pending} images are already waiting; retry later",
                retry_after_s=self.settings.retry_after_s,
            )
        self.pending += count
        self._idle.clear()
        self.metrics.pending.set(self.pending)
        try:
            yield
        finally:
            self.pending -= count
            self.metrics.pending.set(self.pending)
            if self.pending == 0:
                self._idle.set()

    # --- drain -------------------------------------------------------------------------------
    def begin_drain(self) -> asyncio.Task[bool]:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_task(self._drain(), name="drain")
        return self._drained

    async def _drain(self) -> bool:
        """Refuse new work, let accepted work finish (up to the drain timeout)."""
        if self.phase in ("starting", "ready"):
            self.phase = "draining"
        self.metrics.ready.set(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        log.info("draining", extra={"pending": self.pending})
        clean = True
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.drain_timeout_s)
        except TimeoutError:
            clean = False
        if self.batcher is not None:
            clean = await self.batcher.drain(max(0.0, deadline - loop.time())) and clean
            if not clean:  # answer what is left (503 not_ready) so the server can exit now
                await self.batcher.stop()
        log.info("drained" if clean else "drain timed out", extra={"pending": self.pending})
        return clean

    async def stop(self) -> None:
        await self.begin_drain()
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._start_task
        self.phase = "stopped" if self.phase != "failed" else "failed"
        if self.batcher is not None:
            await self.batcher.stop()
        if self.http is not None:
            await self.http.aclose()
        if self.preprocessor is not None:
            self.preprocessor.close()
        if self.pipeline is not None:
            self.pipeline.close()
        _thaw()  # what start() froze may be garbage now (tests build many services)


def _freeze_long_lived() -> None:
    """Take what start-up built (model, vocabulary, app, libraries) out of the cyclic garbage
    collector's reach: it lives as long as the process, yet every full (generation 2)
    collection walked all of it, holding the GIL, so every thread stopped, the event loop
    included. Measured under 2x overload on models/default (258/s, 20 s runs): 80-145 ms
    pauses every few seconds, the tail of the 503 answers' p99 (median of 6 runs 97 ms; 43 ms
    frozen). Objects created later are collected as before.

    Freezing also empties what CPython counts as long-lived, and it holds full collections
    back only while few objects were promoted since the last one *relative to that count*; so
    after freezing, every 10th generation-1 collection became a full one over the objects of all
    requests in flight (50-70 ms under overload). Raising the third threshold to 100 spaces
    them out. 503 p99 under 2.2x overload, median of 4 alternating 15 s runs each (greedy,
    models/default 2.0.0): 118 ms not frozen, 79 ms frozen, 48 ms frozen with threshold 100
    (every run of the last <= 52 ms); saturated throughput within this machine's noise."""
    gc.collect()
    gc.freeze()
    _SAVED_THRESHOLDS[:] = gc.get_threshold()
    gen0, gen1, _ = _SAVED_THRESHOLDS
    gc.set_threshold(gen0, gen1, FULL_COLLECTION_THRESHOLD)


FULL_COLLECTION_THRESHOLD = 100
"""Generation-1 collections between full collections while frozen (CPython's default: 10)."""
_SAVED_THRESHOLDS: list[int] = []


def _thaw() -> None:
    """Undo ``_freeze_long_lived``: unfreeze, and restore the thresholds it replaced."""
    gc.unfreeze()
    if _SAVED_THRESHOLDS:
        gc.set_threshold(*_SAVED_THRESHOLDS)
        _SAVED_THRESHOLDS.clear()
