"""Bench phases (b) and (c), part one: the service's max sustained throughput.

A coarse open-loop ramp in steps of ceiling / ``coarse_steps``, then a finer one with longer
steps from the last good step on, through the knee's rate, until one of them bends. Max
sustained = the best throughput of a step within every criterion, among the finer steps where
any held (the longer steps decide; the short ones only where none did).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from loadtest import generator
from loadtest.benchconfig import BenchConfig
from loadtest.payloads import PayloadPool
from loadtest.stats import StepStats

KNEE_BOUND_X_IDLE = 20.0
KNEE_BOUND_MIN_MS = 1000.0
"""A ramp step is past the knee when the throughput stops following the offered rate, errors
pass 1%, or p99 exceeds max(20 x idle p50, 1 s): a queue growing through the step. Max sustained
throughput is about keeping up; latency at 50/80/100% of it is reported (and the 3 x idle target
at 80% checked) separately."""


def knee_bound_ms(idle_p50_ms: float) -> float:
    return max(KNEE_BOUND_X_IDLE * idle_p50_ms, KNEE_BOUND_MIN_MS)


@dataclass(frozen=True)
class Capacity:
    criteria: generator.KneeCriteria
    steps: list[StepStats]
    """Every step of both ramps, by offered rate."""
    max_sustained_throughput: float | None
    max_sustained_rate: float | None
    knee_reason: str | None

    @property
    def best_throughput(self) -> float:
        """Max sustained throughput, else the first step's (no step held)."""
        return self.max_sustained_throughput or self.steps[0].throughput


async def capacity(
    client: generator.LoadClient,
    target: generator.Target,
    pool: PayloadPool,
    cfg: BenchConfig,
    *,
    ceiling: float,
    bound_ms: float,
) -> Capacity:
    """The coarse ramp up to 2 x ``ceiling`` (or ``cfg.max_rate``), then the finer one."""
    cap = cfg.max_rate or 4 * ceiling
    coarse = max(1.0, min(ceiling, cap) / cfg.coarse_steps)
    ramp = functools.partial(
        generator.ramp,
        client,
        target,
        pool,
        step_duration_s=cfg.step_s,
        p99_bound_ms=bound_ms,
        progress=not cfg.quick,
    )
    first = await ramp(start=coarse, step=coarse, max_rate=min(2 * ceiling, cap))
    steps = list(first.summaries)
    good = first.max_sustained_rate or 0.0
    knee, knee_reason = first.knee_rate, first.knee_reason
    fine_good: list[StepStats] = []
    if knee is not None and cfg.fine_steps:
        fine = (knee - good) / (cfg.fine_steps + 1)
        if fine >= 0.5:
            second = await ramp(
                start=good + fine,
                step=fine,
                max_rate=min(2 * ceiling, cap),
                seed=100,
                step_duration_s=cfg.fine_step_s,
            )
            steps += second.summaries
            knee_reason = second.knee_reason or knee_reason
            fine_good = [s for s in second.summaries if s.past_knee is None]
    good_steps = fine_good or [s for s in steps if s.past_knee is None]
    best = max(good_steps, key=lambda s: s.throughput) if good_steps else None
    steps.sort(key=lambda s: s.offered_rate or 0.0)
    return Capacity(
        criteria=first.criteria,
        steps=steps,
        max_sustained_throughput=best.throughput if best else None,
        max_sustained_rate=best.offered_rate if best else None,
        knee_reason=knee_reason,
    )
