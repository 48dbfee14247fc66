"""The benchmark's ratios and their targets, and the floor under p99 at 80% load."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loadtest.bulk import BulkResult
from loadtest.ceiling import OfflineResult, OfflineRow
from loadtest.naive import NaiveResult
from loadtest.overload import REJECT_P99_TARGET_MS
from loadtest.queue_model import IdealServer, ideal_p99
from loadtest.roofline import Roofline
from loadtest.service_run import ServiceRun

TARGETS = {
    "b_over_a": (">=", 0.85),
    "b_over_d": (">=", 10.0),
    "p99_at_80_over_idle": ("<=", 3.0),
    "overload_503_p99_ms": ("<", REJECT_P99_TARGET_MS),
    "g_cli_over_a": (">=", 0.9),
    "g_endpoint_over_b": (">=", 0.8),
    "g_rerun_share": ("<=", 0.05),
    "g_ray_over_cli": (">=", 0.8),
}


@dataclass(frozen=True)
class BulkRatios:
    """(g): ``captioner caption`` against its references, medians of runs in turns."""

    g_cli_over_a: float
    """In process: the command's steady-state images/s (its summary: the job, after the model
    loaded) / the offline pipeline at (a)'s best configuration on the same images."""
    g_cli_wall_over_a: float
    """The same with the command's whole wall time (model load included)."""
    service_reference: float
    service_reference_source: str
    g_endpoint_over_b: float
    """``--endpoint`` at its best ``--concurrency`` (summary images/s) / ``service_reference``:
    (b)'s max sustained throughput in ``make bench``; alone, the closed loop's."""
    g_endpoint_over_closed_loop: float
    """The same / the load generator's saturated closed loop, measured in turns with it."""
    g_rerun_share: float
    """Wall time of a rerun over the finished output / the first run's."""
    g_ray_over_cli: float | None
    """Ray at its best batch size / the in-process command, whole wall times (both pay their
    start-up), measured in turns; ``None``: not run."""
    g_ray_steady_over_cli: float | None
    """Ray past its fixed cost (``RayPart.steady_rate``) / the in-process job's images/s."""


def bulk_ratios(bulk: BulkResult, service_max: float | None) -> BulkRatios:
    """The ratios of (g); ``service_max`` is (b)'s max sustained throughput when the bench
    measured it, else the closed loop of (g) is the service reference."""
    proc, end, ray = bulk.in_process, bulk.endpoint, bulk.ray
    endpoint = end.job_rate_medians[str(end.best_concurrency)]
    if service_max:
        reference, source = service_max, "(b) max sustained throughput"
    else:
        reference = end.closed_loop_median
        source = f"saturated closed loop, {end.closed_loop_concurrency} clients, in turns"
    ray_best = ray.wall_rate_medians[str(ray.best_batch_size)] if ray else None
    return BulkRatios(
        g_cli_over_a=proc.job_rate_median / proc.offline_median,
        g_cli_wall_over_a=proc.wall_rate_median / proc.offline_median,
        service_reference=reference,
        service_reference_source=source,
        g_endpoint_over_b=endpoint / reference,
        g_endpoint_over_closed_loop=endpoint / end.closed_loop_median,
        g_rerun_share=bulk.rerun.share,
        g_ray_over_cli=_div(ray_best, ray.cli_wall_rate_median) if ray else None,
        g_ray_steady_over_cli=_div(ray.steady_rate, ray.cli_job_rate_median) if ray else None,
    )


@dataclass(frozen=True)
class P99Floor:
    """What an ideal batching server reaches at ``rate``, plus the time outside the model."""

    rate: float
    model: str
    ideal: IdealServer
    outside_model_ms: float
    """Idle p50 - T(1): HTTP, upload, hand-offs."""
    p99_floor_ms: float
    ratio: float
    """``p99_floor_ms`` / idle p50."""


@dataclass(frozen=True)
class Ratios:
    """a and b are the medians of the paired runs where the bench made them (the offline
    pipeline at its best configuration and the service at its max sustained rate, in turns),
    else (a)'s best sweep round and the ramp's best step."""

    a: float
    b: float | None
    c: float | None
    d: float | None
    a_sweep: float
    b_ramp: float | None
    b_over_a: float | None
    b_over_c: float | None
    b_over_d: float | None
    e_int8_over_fp32: float | None
    e_int8_over_fp32_encoder: float | None
    f_encoder_fraction_of_peak: float
    idle_p50_ms: float | None
    p99_at_80_over_idle: float | None
    p99_at_80_floor: P99Floor | None
    p99_at_80_over_idle_floor: float | None
    overload_503_share: float
    overload_503_p99_ms: float | None
    overload_accepted_p99_ms: float | None
    overload_accepted_max_ms: float | None
    overload_errors: dict[str, int]
    deadline_ms: float
    overload_accepted_within_deadline: bool
    bulk: BulkRatios | None = None
    """(g); ``None``: not run."""


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(
    *,
    offline: OfflineResult,
    offline_int8: OfflineResult | None,
    roofline: Roofline,
    service: ServiceRun,
    service_batch1: ServiceRun,
    naive: NaiveResult,
    bulk: BulkResult | None = None,
) -> Ratios:
    a = a_sweep = offline.best.throughput
    b = b_ramp = service.capacity.max_sustained_throughput
    if service.paired is not None:
        a, b = service.paired.offline_median, service.paired.service_median
    c = service_batch1.capacity.max_sustained_throughput
    idle = service.idle.latency_ms.get("p50")
    at_80 = service.level(0.8)
    floor = p99_floor(
        offline.rows,
        at_80.offered_rate,
        idle,
        parallel_rows=offline.parallel_rows or None,
    )
    over = service.overload
    return Ratios(
        a=a,
        b=b,
        c=c,
        d=naive.throughput,
        a_sweep=a_sweep,
        b_ramp=b_ramp,
        b_over_a=_div(b, a),
        b_over_c=_div(b, c),
        b_over_d=_div(b, naive.throughput),
        e_int8_over_fp32=_div(offline_int8.best.throughput, a) if offline_int8 else None,
        e_int8_over_fp32_encoder=(
            _div(offline_int8.best_encoder_throughput, offline.best_encoder_throughput)
            if offline_int8
            else None
        ),
        f_encoder_fraction_of_peak=roofline.encoder_fraction_of_peak,
        idle_p50_ms=idle,
        p99_at_80_over_idle=_div(at_80.latency_ms.get("p99"), idle),
        p99_at_80_floor=floor,
        p99_at_80_over_idle_floor=floor.ratio if floor else None,
        overload_503_share=over.rejected_503_share,
        overload_503_p99_ms=over.rejected_503_p99_ms,
        overload_accepted_p99_ms=over.accepted_p99_ms,
        overload_accepted_max_ms=over.accepted_max_ms,
        overload_errors=over.errors,
        deadline_ms=over.deadline_ms,
        overload_accepted_within_deadline=over.accepted_within_deadline,
        bulk=bulk_ratios(bulk, b) if bulk is not None else None,
    )


def p99_floor(
    rows: Sequence[OfflineRow],
    rate: float | None,
    idle_p50_ms: float | None,
    *,
    parallel_rows: Sequence[OfflineRow] | None = None,
) -> P99Floor | None:
    """A floor under p99 / idle p50 at ``rate`` (80% of the service's capacity), from the offline
    throughput by batch size (a); ``None`` when no batch size of (a) keeps up with the rate.

    ``loadtest.queue_model`` runs an ideal batching server on Poisson arrivals at ``rate``: one
    batch at a time on the whole CPU, each taking the offline pipeline's time for its size (or,
    with ``parallel_rows``, single-threaded batches side by side at their measured times), the
    model starting on everything waiting the moment it is free, the kindest batch cap and
    layout. To its p99 the floor adds what an idle request pays outside the model (HTTP, upload,
    hand-offs: idle p50 - T(1), T(1) = 1 / offline throughput at batch 1). A real service also
    shares the cores with image decoding, HTTP and the load generator, so its p99 can only be
    higher: a target below the floor cannot be met on this machine by tuning the batcher."""
    if not rate or not idle_p50_ms or not rows:
        return None
    ordered = sorted(rows, key=lambda r: r.batch_size)
    t1_ms = 1000.0 / ordered[0].throughput if ordered[0].batch_size == 1 else None
    outside_ms = max(0.0, idle_p50_ms - t1_ms) if t1_ms is not None else 0.0
    layouts = [ideal_p99(ordered, rate)]
    if parallel_rows:  # single-threaded batches side by side, as the service runs them
        layouts.append(ideal_p99(parallel_rows, rate, servers=parallel_rows[0].workers))
    found = [layout for layout in layouts if layout is not None]
    if not found:
        return None
    ideal = min(found, key=lambda layout: layout.p99_ms)
    floor_ms = ideal.p99_ms + outside_ms
    return P99Floor(
        rate=rate,
        model="ideal batching server, Poisson arrivals (loadtest.queue_model)",
        ideal=ideal,
        outside_model_ms=outside_ms,
        p99_floor_ms=floor_ms,
        ratio=floor_ms / idle_p50_ms,
    )


def verdict(name: str, value: float | None) -> str:
    """``met`` or ``MISSED`` against ``TARGETS[name]``; empty for a ratio with no target."""
    if name not in TARGETS:
        return ""
    if value is None:
        return "n/a"
    op, bound = TARGETS[name]
    ok = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
    return f"{'met' if ok else 'MISSED'} (target {op} {bound:g})"
