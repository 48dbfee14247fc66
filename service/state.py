"""The service's life cycle around one ``Captioner``: phase, admission and draining.

``begin_start()`` (in the app's lifespan) loads the bundle if it was not given and warms the
captioner up in the background, while ``/healthz`` already answers and ``/readyz`` says 503
``starting``. ``begin_drain()`` (SIGTERM or lifespan shutdown) turns ``/readyz`` 503
``draining``, refuses new work with 503 ``not_ready``, waits up to ``drain_timeout_s`` for every
accepted request to be answered, then lets the captioner finish its batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Literal

from service.captioner import Captioner, load_model
from service.errors import NotReady, Overloaded
from service.metrics import Metrics
from service.model import CaptionModel
from service.settings import Settings

log = logging.getLogger(__name__)

Phase = Literal["starting", "ready", "draining", "stopped", "failed"]


class ServiceState:
    def __init__(
        self, settings: Settings, metrics: Metrics, model: CaptionModel | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.phase: Phase = "starting"
        self.failure: str | None = None
        self.pending = 0
        self.captioner: Captioner | None = None
        """Built once the bundle is loaded; serves requests only once ``phase`` is ready."""
        self._model = model
        self._idle = asyncio.Event()
        self._idle.set()
        self._start_task: asyncio.Task[None] | None = None
        self._drained: asyncio.Task[bool] | None = None

    # --- start ---------------------------------------------------------------------------
    def begin_start(self) -> None:
        """Load and warm up in the background; the server answers meanwhile."""
        self._start_task = asyncio.get_running_loop().create_task(self._start(), name="warm-up")

    async def wait_started(self) -> None:
        if self._start_task is not None:
            await asyncio.shield(self._start_task)

    async def _start(self) -> None:
        try:
            model = self._model
            if model is None:
                model = await asyncio.to_thread(load_model, self.settings)
            self.captioner = Captioner(self.settings, model, self.metrics)
            await self.captioner.start(freeze=True)
        except Exception as exc:
            self.phase, self.failure = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("model start-up failed")
            return
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
                    "warmup_batch_sizes": self.settings.warmup_sizes,
                },
            )

    # --- admission -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    def check_ready(self) -> Captioner:
        """The captioner, or 503 ``not_ready`` while starting, draining or failed."""
        if self.phase == "ready" and self.captioner is not None:
            return self.captioner
        detail = {
            "starting": "the model is still loading and warming up",
            "draining": "the service is shutting down",
            "stopped": "the service is shutting down",
            "failed": f"the model failed to start: {self.failure}",
        }.get(self.phase, "not ready")
        raise NotReady(
            detail,
            retry_after_s=self.settings.retry_after_s,
            draining=self.phase in ("draining", "stopped"),
        )

    @property
    def max_pending(self) -> int:
        """Images that may be accepted and unanswered at once: the queue, the running batches
        and one per decode thread (more would only be decoded, then refused at the full queue:
        the expensive way to say 503)."""
        s = self.settings
        return s.queue_size + s.max_batch_size * s.max_concurrent_batches + s.decode_threads

    @contextlib.asynccontextmanager
    async def admitted(self, count: int = 1) -> AsyncIterator[None]:
        """Count ``count`` images as pending while the block runs (the HPA metric).

        Beyond ``max_pending`` the request is refused at once with 503 ``overloaded``, before
        its body is read or decoded: under overload, refusing must cost next to nothing (an
        idle service still takes a batch larger than the limit)."""
        if self.pending and self.pending + count > self.max_pending:
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
        if self.captioner is not None:
            clean = await self.captioner.drain(max(0.0, deadline - loop.time())) and clean
            if not clean:  # answer what is left (503 not_ready) so the server can exit now
                await self.captioner.batcher.stop()
        log.info("drained" if clean else "drain timed out", extra={"pending": self.pending})
        return clean

    async def stop(self) -> None:
        await self.begin_drain()
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._start_task
        self.phase = "stopped" if self.phase != "failed" else "failed"
        if self.captioner is not None:
            await self.captioner.close()
