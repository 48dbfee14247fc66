"""An ideal batching server under Poisson arrivals: a floor under the latency a service can reach.

The model has only what no implementation can avoid:

* requests arrive at random (Poisson) at ``rate`` per second, as the load generator sends them;
* ``servers`` copies of the model (1: one batch at a time on the whole CPU; 2: two
  single-threaded batches side by side, as the service runs them) each run one batch at a
  time; a batch of n images takes T(n), the offline pipeline's measured time for that batch
  size in that layout (``batch_seconds``: linear between the measured sizes), and nothing else
  ever takes CPU from them;
* whenever a copy is free it starts at once on everything waiting, up to ``max_batch`` images
  (no waiting for company, no hand-off cost).

A request's latency is its batch's end minus its arrival. A real service also decodes images,
speaks HTTP and shares the cores with them, so its tail can only be longer; ``ideal_p99`` tries
every batch cap and keeps the kindest, so no choice of ``CAPTION_MAX_BATCH_SIZE`` beats it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

BatchTime = Callable[[int], float]
CAPS = (1, 2, 4, 8, 16, 32)


class BatchRate(Protocol):
    """A measured batch size and its images/s (all servers together)."""

    @property
    def batch_size(self) -> int: ...

    @property
    def throughput(self) -> float: ...


def batch_seconds(rows: Sequence[BatchRate], servers: int = 1) -> BatchTime:
    """T(n) in seconds from offline rows (images/s of all ``servers`` together): linear between
    the measured sizes, the nearest measured size's time per image beyond them."""
    ordered = sorted(rows, key=lambda r: r.batch_size)
    sizes = np.array([float(r.batch_size) for r in ordered])
    times = np.array([servers * r.batch_size / r.throughput for r in ordered])

    def seconds(n: int) -> float:
        if n > sizes[-1]:
            return float(times[-1] * n / sizes[-1])
        if n < sizes[0]:
            return float(times[0] * n / sizes[0])
        return float(np.interp(n, sizes, times))

    return seconds


@dataclass(frozen=True)
class Simulated:
    latencies_s: np.ndarray
    """Per request, in arrival order."""
    batch_sizes: np.ndarray
    """Per batch run."""
    busy_fraction: float
    """Share of the time the model was running a batch."""


def simulate(
    rate: float,
    batch_time: BatchTime,
    *,
    max_batch: int,
    servers: int = 1,
    arrivals: int = 100_000,
    seed: int = 0,
) -> Simulated:
    """Run the ideal server on ``arrivals`` Poisson arrivals at ``rate`` per second."""
    rng = np.random.default_rng(seed)
    arrive = np.cumsum(rng.exponential(1.0 / rate, arrivals))
    latencies = np.empty(arrivals)
    sizes: list[int] = []
    free_at = [0.0] * servers
    busy = 0.0
    i = 0
    while i < arrivals:
        server = int(np.argmin(free_at))
        start = max(free_at[server], arrive[i])
        waiting = int(np.searchsorted(arrive, start, side="right")) - i
        n = max(1, min(waiting, max_batch))
        took = batch_time(n)
        free_at[server] = start + took
        busy += took
        latencies[i : i + n] = free_at[server] - arrive[i : i + n]
        sizes.append(n)
        i += n
    return Simulated(latencies, np.array(sizes), float(busy / (servers * max(free_at))))


@dataclass(frozen=True)
class IdealServer:
    """The kindest batch cap of the ideal server at a rate, and what it reaches."""

    servers: int
    max_batch: int
    p50_ms: float
    p99_ms: float
    batch_size_mean: float
    busy_fraction: float


def ideal_p99(
    rows: Sequence[BatchRate],
    rate: float,
    *,
    servers: int = 1,
    caps: Sequence[int] = CAPS,
    arrivals: int = 100_000,
    seed: int = 0,
) -> IdealServer | None:
    """The lowest p99 (and its p50, batch cap, mean batch) the ideal server with ``servers``
    copies reaches at ``rate`` over the batch ``caps``, ``rows`` measured in that layout;
    ``None`` when no cap keeps up (the backlog grows without end)."""
    batch_time = batch_seconds(rows, servers)
    best: IdealServer | None = None
    for cap in caps:
        if servers * cap / batch_time(cap) <= rate:  # even full batches cannot keep up
            continue
        run = simulate(
            rate, batch_time, max_batch=cap, servers=servers, arrivals=arrivals, seed=seed
        )
        p50, p99 = np.percentile(run.latencies_s, [50, 99]) * 1000.0
        if best is None or p99 < best.p99_ms:
            best = IdealServer(
                servers=servers,
                max_batch=cap,
                p50_ms=float(p50),
                p99_ms=float(p99),
                batch_size_mean=float(run.batch_sizes.mean()),
                busy_fraction=run.busy_fraction,
            )
    return best
