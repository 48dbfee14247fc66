"""Prometheus metrics of the service, built against an injected ``CollectorRegistry``.

Names, labels and types are a contract with the deployment (Prometheus rules, Grafana, the HPA
adapter): rename nothing. The table of every metric is docs/configuration.md, and
tests/test_docs.py keeps it equal to what ``Metrics`` registers.

``caption_pending_requests`` (images accepted and not yet answered) is the per-pod autoscaling
metric: a gauge, not a rate, so its average across pods means something, and it rises before
latency does. Scale out when its per-pod average passes ~2 x ``max_batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.errors import CaptionError

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """All service metrics (``BatcherMetrics`` adapts them to the batcher's observer)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "caption_requests",
            "Answered HTTP requests by endpoint and HTTP status code.",
            ["endpoint", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "caption_request_duration_seconds",
            "Time from request arrival to response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "caption_queue_depth", "Images waiting in the batcher queue.", registry=registry
        )
        self.inflight = Gauge(
            "caption_inflight_requests",
            "Images in model batches currently running.",
            registry=registry,
        )
        self.pending = Gauge(
            "caption_pending_requests",
            "Images accepted and not yet answered (fetching, decoding, queued or running); "
            "the per-pod autoscaling metric.",
            registry=registry,
        )
        self.queue_wait = Histogram(
            "caption_queue_wait_seconds",
            "Time an image waited in the queue before its batch started.",
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "caption_batch_size",
            "Images per model batch.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "caption_inference_duration_seconds",
            "Model time per batch by stage (encode, decode).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.preprocess = Histogram(
            "caption_preprocess_duration_seconds",
            "Image decode + resize + normalise time per image.",
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "caption_rejected",
            "Images refused or dropped, by reason.",
            ["reason"],
            registry=registry,
        )
        self.url_fetch = Histogram(
            "caption_url_fetch_duration_seconds",
            "URL image downloads, successful or not.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "caption_model_info",
            "The loaded model bundle (value 1).",
            ["name", "version", "provider"],
            registry=registry,
        )
        self.ready = Gauge(
            "caption_ready", "1 when the model is warm and work is accepted.", registry=registry
        )
        self.cache_hits = Counter(
            "caption_cache_hits",
            "Captions answered from the response cache or joined to an identical one in flight.",
            registry=registry,
        )
        self.cache_misses = Counter(
            "caption_cache_misses",
            "Captions computed by the model while the response cache is on.",
            registry=registry,
        )
        for stage in ("encode", "decode"):
            self.inference.labels(stage=stage)

    def queue_changed(self, queued: int, running: int) -> None:
        self.queue_depth.set(queued)
        self.inflight.set(running)

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        self.batch_size.observe(size)
        for wait in queue_waits_s:
            self.queue_wait.observe(wait)

    def rejected_item(self, reason: str, images: int = 1) -> None:
        self.rejected.labels(reason=reason).inc(images)

    def count_rejection(self, exc: CaptionError) -> None:
        """The one place a refused or dropped image is counted, by the error's ``reason``."""
        if exc.reason is not None:
            self.rejected_item(exc.reason, exc.images)

    def set_model(self, name: str, version: str, provider: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, provider=provider).set(1)


class BatcherMetrics:
    """Adapter: the batcher's observer protocol over ``Metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def queue_changed(self, queued: int, running: int) -> None:
        self._metrics.queue_changed(queued, running)

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        self._metrics.batch_started(size, queue_waits_s)


def fresh_metrics() -> Metrics:
    """Metrics on a registry of their own (a command-line job, a Ray actor, a test)."""
    return Metrics(CollectorRegistry())
