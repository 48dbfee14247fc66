"""Bench phases (b) and (c): one ``python -m service`` subprocess measured over HTTP.

Idle latency (one client, closed loop), max sustained throughput (``loadtest.ramp``), open-loop
steps at 50/80/100% of it and at 2x (``loadtest.overload``), optionally the 100% step in turns
with the offline pipeline (``paired``), and a py-spy profile at 100%.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest import generator, overload, ramp
from loadtest.benchconfig import BenchConfig
from loadtest.ceiling import OfflineRun
from loadtest.payloads import PayloadPool
from loadtest.profiling import CpuMeter, CpuShare, CpuWait, Profile, PySpy, schedstat, since
from loadtest.service_proc import ServiceProcess
from loadtest.stats import StepStats

LEVELS = (0.5, 0.8, 1.0, overload.FACTOR)
"""Offered rates of the level steps, as fractions of the max sustained throughput."""


BENCH_ENV = {
    "CAPTION_LOG_LEVEL": "warning",  # no access log line per request under load
    "CAPTION_DEFAULT_BEAM_SIZE": "1",  # greedy, like (a) and (d): the same work in each
    "CAPTION_CACHE_SIZE": "0",  # the generator cycles its images: each must reach the model
}
"""Service settings of (b) and (c) unless ``--service-env`` says otherwise."""


def level_key(fraction: float) -> str:
    """``levels`` key of a fraction: ``"0.5"``, ``"0.8"``, ``"1"``, ``"2"``."""
    return f"{fraction:g}"


@dataclass(frozen=True)
class PairedRound:
    offline: float
    """Offline pipeline images/s at (a)'s best configuration."""
    service: float
    """The service's throughput at its max sustained rate, right after."""
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Paired:
    """The 100% step in turns with the offline pipeline; b/a is the ratio of the medians."""

    rate: float
    rounds: list[PairedRound]
    offline_median: float
    service_median: float


@dataclass(frozen=True)
class ServiceRun:
    env: dict[str, str]
    """The settings the bench gave the service (the rest are ``Settings`` defaults)."""
    idle: StepStats
    capacity: ramp.Capacity
    levels: dict[str, StepStats]
    """By ``level_key``; the 100% step is the paired rounds' median one."""
    overload: overload.Overload
    paired: Paired | None = None
    profile: Profile | None = None
    profile_step: StepStats | None = None
    """The extra step py-spy sampled (kept out of the figures)."""
    cpu: CpuShare | None = None

    def setting(self, name: str) -> Any:
        return service_setting(self.env, name)

    def level(self, fraction: float) -> StepStats:
        return self.levels[level_key(fraction)]


def service_setting(env: dict[str, str], name: str) -> Any:
    """The value the service ran with: the bench's override, else the Settings default."""
    from service.settings import Settings

    raw = env.get(f"CAPTION_{name.upper()}")
    default = Settings.model_fields[name].default
    return type(default)(raw) if raw is not None else default


async def _level(
    client: generator.LoadClient,
    target: generator.Target,
    pool: PayloadPool,
    cfg: BenchConfig,
    pid: int,
    *,
    rate: float,
    seed: int,
) -> StepStats:
    """One open-loop step at ``rate``, with the CPU the service and the generator used and
    waited for."""
    before = schedstat(pid), schedstat()
    step = await generator.open_loop(
        client, target, pool, rate=rate, duration_s=cfg.level_s, seed=seed, progress=not cfg.quick
    )
    after = schedstat(pid), schedstat()
    wait = CpuWait(service=since(before[0], after[0]), generator=since(before[1], after[1]))
    stats = dataclasses.replace(step.stats(), cpu_wait=wait)
    print("  " + generator.step_line(stats), flush=True)
    return stats


async def _paired_levels(
    level: Callable[..., Awaitable[StepStats]],
    *,
    rounds_asked: int,
    rate: float,
    offline: OfflineRun,
) -> tuple[StepStats, Paired]:
    """The 100% level (``level(rate=, seed=)``), ``rounds_asked`` times, each after a run of the
    offline pipeline: the step with the median throughput, and the paired figures."""
    rounds: list[tuple[float, StepStats]] = []
    for i in range(rounds_asked):
        ceiling = offline()  # the service is idle meanwhile
        print(f"  paired round {i + 1}: offline {ceiling:.1f} img/s", flush=True)
        rounds.append((ceiling, await level(rate=rate, seed=10 + i)))
    served = sorted(rounds, key=lambda r: r[1].throughput)
    paired = Paired(
        rate=rate,
        rounds=[
            PairedRound(a, s.throughput, s.latency_ms.get("p50"), s.latency_ms.get("p99"))
            for a, s in rounds
        ],
        offline_median=statistics.median(a for a, _ in rounds),
        service_median=statistics.median(s.throughput for _, s in rounds),
    )
    return served[len(served) // 2][1], paired


async def _profiled_step(
    client: generator.LoadClient,
    target: generator.Target,
    pool: PayloadPool,
    cfg: BenchConfig,
    pid: int,
    rate: float,
) -> tuple[Profile, StepStats | None]:
    """One more step at ``rate`` with py-spy sampling the service."""
    spy = PySpy(pid, cfg.level_s, Path(tempfile.mkdtemp()) / "service.pyspy.txt")
    if not spy.available:
        return Profile(available=False), None
    step = await generator.open_loop(
        client, target, pool, rate=rate, duration_s=cfg.level_s, seed=77, progress=False
    )
    return spy.finish(), step.stats()


async def _service_run(
    cfg: BenchConfig,
    pool: PayloadPool,
    env: dict[str, str],
    ceiling: float,
    offline: OfflineRun | None,
) -> ServiceRun:
    with ServiceProcess(cfg.bundle_dir, env=env) as svc:
        assert svc.pid is not None
        target = generator.Target(svc.base_url, timeout_s=60.0)
        async with generator.make_client(target) as client:
            await generator.closed_loop(
                client, target, pool, concurrency=2, duration_s=1.0, progress=False
            )  # warm connections and code paths
            idle = (
                await generator.closed_loop(
                    client, target, pool, concurrency=1, duration_s=cfg.idle_s, progress=False
                )
            ).stats()
            idle_p50 = idle.latency_ms["p50"]
            bound = ramp.knee_bound_ms(idle_p50)
            print(
                f"  idle latency p50 {idle_p50:.1f} ms; knee bound p99 <= {bound:.0f} ms",
                flush=True,
            )
            cap = await ramp.capacity(client, target, pool, cfg, ceiling=ceiling, bound_ms=bound)
            best = cap.best_throughput
            print(f"  max sustained throughput {best:.1f}/s", flush=True)
            level = functools.partial(_level, client, target, pool, cfg, svc.pid)
            levels: dict[str, StepStats] = {}
            paired = None
            for frac in LEVELS:
                rate = max(0.5, frac * best)
                if frac == 1.0 and offline is not None:
                    levels[level_key(frac)], paired = await _paired_levels(
                        level, rounds_asked=cfg.paired_rounds, rate=rate, offline=offline
                    )
                else:
                    levels[level_key(frac)] = await level(rate=rate, seed=int(frac * 10))
            profile, profile_step = (
                await _profiled_step(client, target, pool, cfg, svc.pid, best)
                if cfg.profile
                else (None, None)
            )
    deadline_ms = 1000 * service_setting(env, "request_timeout_s")
    return ServiceRun(
        env=env,
        idle=idle,
        capacity=cap,
        levels=levels,
        overload=overload.overload(levels[level_key(overload.FACTOR)], deadline_ms),
        paired=paired,
        profile=profile,
        profile_step=profile_step,
    )


def service_phase(
    cfg: BenchConfig,
    pool: PayloadPool,
    ceiling: float,
    *,
    batching: bool,
    offline: OfflineRun | None = None,
) -> ServiceRun:
    env = {**BENCH_ENV, **cfg.service_env}
    if not batching:
        env["CAPTION_MAX_BATCH_SIZE"] = "1"
    meter = CpuMeter().start()
    run = asyncio.run(_service_run(cfg, pool, env, ceiling, offline))
    return dataclasses.replace(run, cpu=meter.read())
