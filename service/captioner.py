"""``Captioner``: the HTTP-free captioning core behind every front door (HTTP, bulk CLI, Ray).

Built once from ``Settings`` and a loaded bundle, it owns everything a caption needs: the model,
the image preprocessor, the batch runner, the micro-batcher, the response cache and the URL
fetcher with its slots. Life cycle: ``await start()`` (warm-up, then the batcher's flush loop),
``await caption(...)`` any number of times, concurrently, ``await drain(timeout)`` to let
accepted work finish, ``await close()``.

It imports neither FastAPI nor Starlette, so a command-line job or a Ray actor gets the same
pipeline without a web stack; refusals are raised as ``service.errors`` and never counted here
(the front door that answers the caller counts them).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Self, TypeVar

from service.attention import grid_shape
from service.batch_runner import BatchRunner, CaptionJob, CaptionOutcome
from service.batcher import MicroBatcher
from service.errors import DeadlineExceeded
from service.gc_freeze import freeze_long_lived, thaw
from service.manifest import Manifest
from service.metrics import BatcherMetrics, Metrics, fresh_metrics
from service.model import Caption, CaptionModel
from service.options import CaptionOptions, OptionRules
from service.preprocess import DecodedImage, Preprocessor
from service.response_cache import ResponseCache
from service.settings import Settings
from service.urlfetch import FetchPolicy, build_client, fetch_image


@dataclass(frozen=True)
class ImageUrl:
    """An image to fetch (http/https, under the SSRF policy) rather than bytes already here."""

    url: str


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage for one caption; stages are 0 when the answer came cached."""

    fetch_s: float
    preprocess_s: float
    queue_s: float
    encode_s: float
    decode_s: float
    total_s: float
    cached: bool = False


@dataclass(frozen=True)
class CaptionResult:
    captions: list[Caption]
    """Best first; each with its text, score, tokens and (when asked) attention rows."""
    model: ModelRef
    sha256: str
    """Of the image bytes captioned."""
    width: int
    height: int
    timings: Timings
    attention_grid: list[int] | None = None
    """[rows, cols] of the grid the attention rows cover, when attention was asked for."""

    @property
    def caption(self) -> str:
        return self.captions[0].text if self.captions else ""


@dataclass(frozen=True)
class _Computed:
    """What the model produced for one (image, options) pair; shared by coalesced callers."""

    outcome: CaptionOutcome
    decoded_width: int
    decoded_height: int
    preprocess_s: float
    queue_s: float


CacheKey = tuple[str, str, CaptionOptions]
"""(sha256 of the image bytes, model version, options)."""
T = TypeVar("T")


class Captioner:
    def __init__(self, settings: Settings, model: CaptionModel, metrics: Metrics | None = None):
        self.settings = settings
        self.model = model
        self.metrics = metrics if metrics is not None else fresh_metrics()
        manifest = model.manifest
        self.rules = OptionRules.for_bundle(settings, manifest)
        self.preprocessor = Preprocessor(
            model.preprocessing,
            max_pixels=settings.max_image_pixels,
            threads=settings.decode_threads,
        )
        self.runner = BatchRunner(
            model,
            self.metrics,
            threads=settings.max_concurrent_batches,
            nice=settings.model_thread_nice,
        )
        self.batcher: MicroBatcher[CaptionJob, CaptionOutcome] = MicroBatcher(
            self.runner,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000.0,
            queue_size=settings.queue_size,
            max_concurrent_batches=settings.max_concurrent_batches,
            retry_after_s=settings.retry_after_s,
            observer=BatcherMetrics(self.metrics),
        )
        self.cache: ResponseCache[CacheKey, _Computed] = ResponseCache(settings.cache_size)
        self.fetch_policy = FetchPolicy.from_settings(settings)
        self._fetch_slots = asyncio.Semaphore(settings.url_fetch_concurrency)
        self._http = build_client(self.fetch_policy)
        self.model_ref = ModelRef(manifest.name, manifest.version)

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics | None = None) -> Captioner:
        """Validate and open the bundle in ``settings.bundle_dir`` (raises ``BundleError``)."""
        return cls(settings, load_model(settings), metrics)

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    # --- life cycle ----
    async def start(self, *, freeze: bool = False, beam_size: int | None = None) -> None:
        """Warm every batch-size bucket up (first runs allocate and plan), start the batcher.

        ``beam_size`` is the widest beam to warm up for (default: the settings' default beam);
        ``freeze`` takes what start-up built out of the cyclic GC's reach (long-lived servers:
        full collections over the model stop every thread, see ``service.gc_freeze``)."""
        s = self.settings
        beam = beam_size or s.default_beam_size
        await asyncio.to_thread(self.model.warm_up, s.warmup_sizes, beam_size=beam)
        self.batcher.start()
        if freeze:
            freeze_long_lived()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new images; wait for queued and running ones. True if all finished in time."""
        return await self.batcher.drain(timeout_s)

    async def close(self) -> None:
        """Stop the batcher (what is left fails with 503 ``not_ready``) and free the pools."""
        await self.batcher.stop()
        await self._http.aclose()
        self.preprocessor.close()
        self.runner.close()
        thaw()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- captioning ----
    def options(self, **raw: object) -> CaptionOptions:
        """Options from keyword values (``beam_size=3``...), validated by ``self.rules``."""
        return self.rules.parse(raw)

    async def caption(
        self, source: bytes | ImageUrl, options: CaptionOptions, *, deadline: float | None = None
    ) -> CaptionResult:
        """Caption one image; ``deadline`` is on the event loop's clock (``loop.time()``).

        Raises ``service.errors.CaptionError`` subclasses: a bad image, URL or size is the
        caller's 4xx; a full queue 503; a passed deadline 504."""
        arrived = time.perf_counter()
        fetch_s = 0.0
        if isinstance(source, ImageUrl):
            started = time.perf_counter()
            data = await _within(deadline, self._fetch(source.url))
            fetch_s = time.perf_counter() - started
        else:
            data = source
        digest = hashlib.sha256(data).hexdigest()
        computed, lookup = await self.cache.get_or_compute(
            (digest, self.model_ref.version, options),
            lambda: self._compute(data, options, deadline),
        )
        if self.cache.enabled:
            counter = self.metrics.cache_misses if lookup == "miss" else self.metrics.cache_hits
            counter.inc()
        cached = lookup != "miss"
        outcome = computed.outcome
        timings = Timings(
            fetch_s=fetch_s,
            preprocess_s=0.0 if cached else computed.preprocess_s,
            queue_s=0.0 if cached else computed.queue_s,
            encode_s=0.0 if cached else outcome.encode_s,
            decode_s=0.0 if cached else outcome.decode_s,
            total_s=time.perf_counter() - arrived,
            cached=cached,
        )
        grid = None
        if options.attention:
            grid = grid_shape(self.manifest.encoder.grid_size or 1)
        return CaptionResult(
            captions=outcome.captions,
            model=self.model_ref,
            sha256=digest,
            width=computed.decoded_width,
            height=computed.decoded_height,
            timings=timings,
            attention_grid=grid,
        )

    async def _fetch(self, url: str) -> bytes:
        started = time.perf_counter()
        try:
            async with self._fetch_slots:
                fetched = await fetch_image(url, self.fetch_policy, self._http)
        finally:
            self.metrics.url_fetch.observe(time.perf_counter() - started)
        return fetched.data

    async def _compute(
        self, data: bytes, options: CaptionOptions, deadline: float | None
    ) -> _Computed:
        decoded: DecodedImage = await _within(deadline, self.preprocessor(data))
        self.metrics.preprocess.observe(decoded.seconds)
        job = CaptionJob(pixels=decoded.pixels, request=options.decode)
        outcome, waited = await self.batcher.submit_timed(job, deadline=deadline)
        return _Computed(outcome, decoded.width, decoded.height, decoded.seconds, waited)


def load_model(settings: Settings) -> CaptionModel:
    """The bundle ``settings`` name, opened with their provider and thread settings."""
    return CaptionModel.load(
        settings.bundle_dir,
        provider=settings.provider,
        intra_op_threads=settings.threads_per_batch,
        inter_op_threads=settings.inter_op_threads,
        use_int8=settings.use_int8,
    )


async def _within(deadline: float | None, work: Awaitable[T]) -> T:
    """``await work``, or 504 ``deadline_exceeded`` once ``deadline`` has passed."""
    try:
        async with asyncio.timeout_at(deadline):
            return await work
    except TimeoutError:
        raise DeadlineExceeded("no answer within the request deadline") from None
