"""Per-request records and the per-step summary every report is built from.

Latency is measured from each request's *scheduled* send time, so a generator that falls behind
(or a server that stalls it) cannot hide queueing: this avoids coordinated omission. The time from
the actual send is kept beside it (``service_ms``) and so is the send lag, to show whether the
generator itself kept to its schedule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from loadtest.profiling import CpuWait
from loadtest.promscrape import ServerStats

CLIENT_ERROR = 0
"""``status`` of a request that got no HTTP response (connection error, client timeout)."""


@dataclass(frozen=True)
class RequestRecord:
    """One request; times are seconds from the start of its step on the loop's monotonic clock."""

    scheduled: float
    sent: float
    done: float
    status: int
    code: str | None = None
    """The error body's machine-readable ``code`` (or the client-side error's name)."""

    @property
    def latency(self) -> float:
        return self.done - self.scheduled

    @property
    def service_time(self) -> float:
        return self.done - self.sent

    @property
    def ok(self) -> bool:
        return self.status == 200


def percentiles_ms(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ms, ...}`` of values in seconds; empty dict when there are none."""
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}


WARM_UP_SHARE = 0.25
"""A step's throughput counts the answers that arrived in its steady part, from this share of
its duration to its end, per second of that window (and ``offered_window`` the arrivals scheduled
in it). Dividing every answer by the time until the last one (``throughput_with_drain``, how
vegeta reports it) would charge the step for its own latency; the window holds the same
requests' answers whether the service keeps up (then it equals the arrival rate) or not (then it
is the rate the service manages)."""


@dataclass(frozen=True)
class ClientStats:
    """Generator-side facts of an open-loop step."""

    peak_in_flight: int
    max_connections: int
    connection_limited: bool
    """The limit was hit: latency then includes waiting for a connection."""


@dataclass(frozen=True)
class StepStats:
    """The summary of one step; percentile maps are ``{"p50": ms, ...}`` (empty: no requests)."""

    mode: str = "open"
    offered_rate: float | None = None
    offered_actual: float | None = None
    offered_window: float | None = None
    """Arrivals scheduled in the steady window, per second (see ``WARM_UP_SHARE``)."""
    arrivals: str | None = None
    concurrency: int | None = None
    duration_s: float = 0.0
    requests: int = 0
    ok: int = 0
    throughput: float = 0.0
    """Answers (200) in the steady window, per second."""
    throughput_with_drain: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    """From the scheduled send, answered requests."""
    latency_mean_ms: float | None = None
    latency_max_ms: float | None = None
    service_ms: dict[str, float] = field(default_factory=dict)
    """From the actual send, answered requests."""
    errors: dict[str, int] = field(default_factory=dict)
    """``status:code`` -> count of requests not answered 200."""
    error_share: float = 0.0
    rejected_503_share: float = 0.0
    rejected_503_latency_ms: dict[str, float] = field(default_factory=dict)
    rejected_503_service_ms: dict[str, float] = field(default_factory=dict)
    send_lag_ms: dict[str, float] = field(default_factory=dict)
    client: ClientStats | None = None
    server: ServerStats | None = None
    """From /metrics scraped before and after the step."""
    past_knee: str | None = None
    """Set by a ramp: why the step is past the knee, ``None`` while the service kept up."""
    cpu_wait: CpuWait | None = None
    """Set by the bench: CPU the service and the generator used and waited for."""


@dataclass
class StepResult:
    """One load step: how it was driven, every request, and the service's metrics delta."""

    mode: str
    """``open`` (arrivals at a set rate) or ``closed`` (N clients in a loop)."""
    duration_s: float
    records: list[RequestRecord]
    offered_rate: float | None = None
    arrivals: str | None = None
    concurrency: int | None = None
    client: ClientStats | None = None
    server: ServerStats | None = None
    """``promscrape.summarise_delta`` of /metrics scraped before and after the step."""

    def summary(self) -> dict[str, Any]:
        """``stats()`` as a JSON-ready dict."""
        return asdict(self.stats())

    def stats(self) -> StepStats:
        records = self.records
        ok = [r for r in records if r.ok]
        rejected = [r for r in records if r.status == 503]
        failures = Counter(
            f"{r.status}:{r.code}" if r.code else str(r.status) for r in records if not r.ok
        )
        end = max([self.duration_s, *(r.done for r in records)])
        lags = [r.sent - r.scheduled for r in records]
        warm, stop = WARM_UP_SHARE * self.duration_s, self.duration_s
        window = stop - warm
        return StepStats(
            mode=self.mode,
            offered_rate=self.offered_rate,
            offered_actual=len(records) / self.duration_s if self.offered_rate else None,
            offered_window=(
                sum(warm <= r.scheduled < stop for r in records) / window
                if self.offered_rate and window > 0
                else None
            ),
            arrivals=self.arrivals,
            concurrency=self.concurrency,
            duration_s=self.duration_s,
            requests=len(records),
            ok=len(ok),
            throughput=(sum(warm <= r.done <= stop for r in ok) / window if window > 0 else 0.0),
            throughput_with_drain=len(ok) / end if end > 0 else 0.0,
            latency_ms=percentiles_ms([r.latency for r in ok]),
            latency_mean_ms=1000 * float(np.mean([r.latency for r in ok])) if ok else None,
            latency_max_ms=1000 * max(r.latency for r in ok) if ok else None,
            service_ms=percentiles_ms([r.service_time for r in ok]),
            errors=dict(sorted(failures.items())),
            error_share=(len(records) - len(ok)) / len(records) if records else 0.0,
            rejected_503_share=len(rejected) / len(records) if records else 0.0,
            rejected_503_latency_ms=percentiles_ms([r.latency for r in rejected], (50, 99)),
            rejected_503_service_ms=percentiles_ms([r.service_time for r in rejected], (50, 99)),
            send_lag_ms=percentiles_ms(lags, (50, 99, 100)),
            client=self.client,
            server=self.server,
        )
