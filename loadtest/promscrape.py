"""Scrape the service's ``/metrics`` before and after a load step and read what happened in between.

    before = await scrape(client, base_url)
    ...load...
    after = await scrape(client, base_url)
    summary = summarise_delta(after - before)

``summarise_delta`` reports the batch-size distribution (``caption_batch_size`` histogram), the
queue wait (``caption_queue_wait_seconds``: mean and bucket-interpolated p50/p99, the way
PromQL's ``histogram_quantile`` does), requests by status code and rejections by reason.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

SampleKey = tuple[str, tuple[tuple[str, str], ...]]

BATCH_SIZE = "caption_batch_size"
QUEUE_WAIT = "caption_queue_wait_seconds"
REQUESTS = "caption_requests_total"
REJECTED = "caption_rejected_total"
INFERENCE = "caption_inference_duration_seconds"
PREPROCESS = "caption_preprocess_duration_seconds"


@dataclass(frozen=True)
class Snapshot:
    """Every sample of one scrape: (name, sorted labels) -> value; ``_created`` is dropped."""

    samples: dict[SampleKey, float] = field(default_factory=dict)

    def __sub__(self, earlier: Snapshot) -> Snapshot:
        return Snapshot({k: v - earlier.samples.get(k, 0.0) for k, v in self.samples.items()})

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(
            v
            for (n, lbls), v in self.samples.items()
            if n == name and all((k, val) in lbls for k, val in labels.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """``name`` summed per value of ``label``."""
        out: dict[str, float] = defaultdict(float)
        for (n, lbls), v in self.samples.items():
            if n == name:
                out[dict(lbls).get(label, "")] += v
        return dict(out)


def parse(text: str) -> Snapshot:
    """Parse the Prometheus text exposition format."""
    samples: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return Snapshot(samples)


async def scrape(client: httpx.AsyncClient, base_url: str, *, timeout_s: float = 5.0) -> Snapshot:
    response = await client.get(f"{base_url.rstrip('/')}/metrics", timeout=timeout_s)
    response.raise_for_status()
    return parse(response.text)


@dataclass(frozen=True)
class Histogram:
    """One histogram (summed over its non-``le`` labels): upper bounds, cumulative counts, sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def per_bucket(self) -> dict[str, float]:
        """Non-cumulative count per bucket, keyed by its upper bound (``+Inf`` last)."""
        out: dict[str, float] = {}
        previous = 0.0
        for bound, cum in zip(self.bounds, self.cumulative, strict=True):
            out[_fmt_bound(bound)] = cum - previous
            previous = cum
        return out

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket holding rank ``q * count`` (as PromQL does)."""
        if not self.count:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for bound, cum in zip(self.bounds, self.cumulative, strict=True):
            if cum >= rank:
                if math.isinf(bound):
                    return lower
                inside = cum - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = bound, cum
        return lower


def _fmt_bound(bound: float) -> str:
    if math.isinf(bound):
        return "+Inf"
    return str(int(bound)) if bound.is_integer() else f"{bound:g}"


def histogram(snapshot: Snapshot, name: str) -> Histogram | None:
    """The histogram ``name`` from a snapshot (or a delta of two), ``None`` if absent."""
    buckets: dict[float, float] = defaultdict(float)
    for (n, lbls), v in snapshot.samples.items():
        if n == f"{name}_bucket":
            buckets[float(dict(lbls)["le"])] += v
    if not buckets:
        return None
    bounds = tuple(sorted(buckets))
    return Histogram(bounds, tuple(buckets[b] for b in bounds), snapshot.value(f"{name}_sum"))


@dataclass(frozen=True)
class ServerStats:
    """What the service did between two scrapes (``None``: the metric was absent)."""

    batches: float | None = None
    batch_size_mean: float | None = None
    batch_size_distribution: dict[str, float] = field(default_factory=dict)
    """Batches per bucket, keyed by the bucket's upper bound (non-cumulative)."""
    queue_wait_mean_ms: float | None = None
    queue_wait_p50_ms: float | None = None
    queue_wait_p99_ms: float | None = None
    mean_ms_per_batch: dict[str, float] = field(default_factory=dict)
    """Mean inference time per batch, by stage (``encode``, ``decode``)."""
    preprocess_mean_ms_per_image: float | None = None
    caption_requests_by_code: dict[str, float] = field(default_factory=dict)
    rejected_by_reason: dict[str, float] = field(default_factory=dict)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def summarise_delta(delta: Snapshot) -> ServerStats:
    """What the service did between two scrapes."""
    batch = histogram(delta, BATCH_SIZE)
    wait = histogram(delta, QUEUE_WAIT)
    stages = delta.by_label(f"{INFERENCE}_count", "stage")
    per_batch = {
        stage: 1000 * delta.value(f"{INFERENCE}_sum", stage=stage) / count
        for stage, count in sorted(stages.items())
        if count
    }
    pre_count = delta.value(f"{PREPROCESS}_count")
    requests: dict[str, float] = defaultdict(float)
    for (name, labels), value in delta.samples.items():
        tags = dict(labels)
        if name == REQUESTS and tags.get("endpoint", "").startswith("/caption"):
            requests[tags.get("code", "")] += value
    rejected = delta.by_label(REJECTED, "reason")
    return ServerStats(
        batches=None if batch is None else batch.count,
        batch_size_mean=None if batch is None else batch.mean,
        batch_size_distribution={} if batch is None else batch.per_bucket(),
        queue_wait_mean_ms=None if wait is None else _ms(wait.mean),
        queue_wait_p50_ms=None if wait is None else _ms(wait.quantile(0.5)),
        queue_wait_p99_ms=None if wait is None else _ms(wait.quantile(0.99)),
        mean_ms_per_batch=per_batch,
        preprocess_mean_ms_per_image=(
            1000 * delta.value(f"{PREPROCESS}_sum") / pre_count if pre_count else None
        ),
        caption_requests_by_code={k: v for k, v in sorted(requests.items()) if v},
        rejected_by_reason={k: v for k, v in sorted(rejected.items()) if v},
    )
