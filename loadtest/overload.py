"""Bench phases (b) and (c), part three: how the service says no at twice its capacity.

An overloaded service must answer the excess at once with 503 (a full queue, ``Retry-After``)
and still answer what it accepted within its request deadline; a 503 that takes as long as a
caption would leave clients no time to go elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.stats import StepStats

FACTOR = 2.0
"""The overload step offers this multiple of the max sustained rate."""
REJECT_P99_TARGET_MS = 50.0
"""A 503 is answered within this (p99, from the actual send)."""


@dataclass(frozen=True)
class Overload:
    offered_rate: float | None
    rejected_503_share: float
    rejected_503_p99_ms: float | None
    """From the actual send: the time to be told no."""
    accepted_p99_ms: float | None
    """From the scheduled send."""
    accepted_max_ms: float | None
    errors: dict[str, int]
    deadline_ms: float
    """The service's ``CAPTION_REQUEST_TIMEOUT_S``."""

    @property
    def accepted_within_deadline(self) -> bool:
        return self.accepted_max_ms is None or self.accepted_max_ms <= self.deadline_ms

    @property
    def rejects_fast(self) -> bool | None:
        p99 = self.rejected_503_p99_ms
        return None if p99 is None else p99 < REJECT_P99_TARGET_MS


def overload(step: StepStats, deadline_ms: float) -> Overload:
    """The overload step's verdict figures."""
    return Overload(
        offered_rate=step.offered_rate,
        rejected_503_share=step.rejected_503_share,
        rejected_503_p99_ms=step.rejected_503_service_ms.get("p99"),
        accepted_p99_ms=step.latency_ms.get("p99"),
        accepted_max_ms=step.latency_max_ms,
        errors=step.errors,
        deadline_ms=deadline_ms,
    )
