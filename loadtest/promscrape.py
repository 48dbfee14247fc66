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
from typing import Any

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


def summarise_delta(delta: Snapshot) -> dict[str, Any]:
    """What the service did between two scrapes, as plain JSON-ready values."""
    out: dict[str, Any] = {}
    batch = histogram(delta, BATCH_SIZE)
    if batch is not None:
        out["batches"] = batch.count
        out["batch_size_mean"] = batch.mean
        out["batch_size_distribution"] = batch.per_bucket()
    wait = histogram(delta, QUEUE_WAIT)
    if wait is not None:
        out["queue_wait_mean_ms"] = None if wait.mean is None else 1000 * wait.mean
        for q in (0.5, 0.99):
            value = wait.quantile(q)
            out[f"queue_wait_p{round(q * 100)}_ms"] = None if value is None else 1000 * value
    stages = delta.by_label(f"{INFERENCE}_count", "stage")
    for stage, count in sorted(stages.items()):
        if count:
            total = delta.value(f"{INFERENCE}_sum", stage=stage)
            out[f"{stage}_mean_ms_per_batch"] = 1000 * total / count
    pre_count = delta.value(f"{PREPROCESS}_count")
    if pre_count:
        out["preprocess_mean_ms_per_image"] = 1000 * delta.value(f"{PREPROCESS}_sum") / pre_count
    requests: dict[str, float] = defaultdict(float)
    for (name, labels), value in delta.samples.items():
        tags = dict(labels)
        if name == REQUESTS and tags.get("endpoint", "").startswith("/caption"):
            requests[tags.get("code", "")] += value
    if requests:
        out["caption_requests_by_code"] = {k: v for k, v in sorted(requests.items()) if v}
    rejected = delta.by_label(REJECTED, "reason")
    if rejected:
        out["rejected_by_reason"] = {k: v for k, v in sorted(rejected.items()) if v}
    return out
