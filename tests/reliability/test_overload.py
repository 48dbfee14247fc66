"""Overload at twice the measured capacity, against ``python -m service`` (its own process).

The capacity is measured first (closed loop, no rejections); then an open-loop Poisson load at
2x capacity runs for 12 s (CI) or 60 s (``slow``), on a test bundle whose encoder makes the model
the bottleneck. What a user must see: the excess refused at once with 503 ``overloaded`` and
``Retry-After`` (median under half the accepted requests' median; p50 < 25 ms and p99 < 50 ms
in the 60 s variant, meant for a quiet machine; in CI, where the 2 cores are shared with the
load generator and whatever else runs, p50 < 200 ms and p99 < 1 s), every accepted request
answered 200 within
its deadline (no 504, no 5xx), the server still serving near capacity, and its RSS within 10% of
the warmed-up value.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from loadtest.generator import LoadClient, Target, closed_loop, open_loop
from loadtest.payloads import PayloadPool
from loadtest.stats import StepResult
from tests.reliability.conftest import ServiceFactory, assert_healthy, rss_bytes, server_errors

pytestmark = pytest.mark.e2e

DEADLINE_S = 3.0
ENV = {
    "CAPTION_MAX_BATCH_SIZE": "4",
    "CAPTION_QUEUE_SIZE": "8",
    "CAPTION_MAX_CONCURRENT_BATCHES": "1",
    "CAPTION_INTRA_OP_THREADS": "1",
    "CAPTION_REQUEST_TIMEOUT_S": str(DEADLINE_S),
    "CAPTION_LOG_LEVEL": "warning",
}


@pytest.fixture(scope="module")
def pool(flickr8k_dir: Path) -> PayloadPool:
    paths = sorted((flickr8k_dir / "images").glob("*.jpg"))[:16]
    return PayloadPool.from_images(paths, "raw")


async def _retry_after_samples(url: str, body: bytes, stop: asyncio.Event) -> list[str]:
    """Plain httpx requests during the overload: the headers of the 503s they get."""
    seen: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            r = await client.post(
                f"{url}/caption", content=body, headers={"Content-Type": "image/jpeg"}
            )
            if r.status_code == 503:
                seen.append(r.headers.get("retry-after", ""))
            await asyncio.sleep(0.2)
    return seen


async def _scenario(url: str, pool: PayloadPool, pid: int, seconds: float) -> dict[str, Any]:
    target = Target(url, timeout_s=30.0, scrape_metrics=False)
    async with LoadClient(target, "raw", max_connections=512) as client:
        await closed_loop(client, target, pool, concurrency=8, duration_s=2.0, progress=False)
        probe = await closed_loop(
            client, target, pool, concurrency=8, duration_s=4.0, progress=False
        )
        capacity = probe.summary()["throughput"]
        rss_warm = rss_bytes(pid)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_retry_after_samples(url, pool.requests[0].content, stop))
        step: StepResult = await open_loop(
            client, target, pool, rate=2 * capacity, duration_s=seconds, progress=False
        )
        stop.set()
        retry_after = await sampler
        return {
            "capacity": capacity,
            "probe": probe.summary(),
            "step": step,
            "rss_warm": rss_warm,
            "rss_after": rss_bytes(pid),
            "retry_after": retry_after,
        }


def _check_overload(
    service_process: ServiceFactory,
    heavy_bundle: Path,
    pool: PayloadPool,
    seconds: float,
    p99_bound_ms: float,
) -> None:
    proc = service_process(heavy_bundle, **ENV)  # the model, not HTTP, is the bottleneck
    out = asyncio.run(_scenario(proc.url, pool, proc.process.pid, seconds))
    step: StepResult = out["step"]
    summary = step.summary()
    records = step.records
    print({k: summary[k] for k in ("offered_rate", "requests", "ok", "throughput", "errors")})
    print("capacity", out["capacity"], "503 latency", summary["rejected_503_latency_ms"])
    print("503 service", summary["rejected_503_service_ms"], "lag", summary["send_lag_ms"])
    print("rss MB", out["rss_warm"] / 2**20, "->", out["rss_after"] / 2**20)
    assert out["probe"]["errors"] == {}, out["probe"]["errors"]  # the probe itself was clean
    statuses = {r.status for r in records}
    assert statuses <= {200, 503}, summary["errors"]
    rejected = [r for r in records if r.status == 503]
    accepted = [r for r in records if r.status == 200]
    assert rejected and all(r.code == "overloaded" for r in rejected)
    assert len(rejected) >= 0.15 * len(records), summary["errors"]  # ~half is excess at 2x
    assert out["retry_after"] and all(int(v) >= 1 for v in out["retry_after"])
    reject_ms = np.percentile([r.latency for r in rejected], [50, 95, 99]) * 1000
    accept_p50_ms = float(np.percentile([r.latency for r in accepted], 50)) * 1000
    # refusing costs next to nothing: faster than a queued answer, and fast in absolute terms
    # (the p99 bound has headroom for a 2-core CI machine shared with the load generator)
    assert reject_ms[0] < accept_p50_ms / 2, (reject_ms, accept_p50_ms)
    assert reject_ms[0] < (25 if p99_bound_ms <= 50 else 200), reject_ms
    assert reject_ms[2] < p99_bound_ms, reject_ms
    assert max(r.latency for r in accepted) < DEADLINE_S
    # still serving near capacity (CI: the other processes' share of the 2 cores moves too)
    assert summary["throughput"] >= (0.6 if p99_bound_ms <= 50 else 0.4) * out["capacity"]
    assert out["rss_after"] < 1.10 * out["rss_warm"]
    assert_healthy(proc.url, pool.requests[0].content)
    assert server_errors(proc.url, allowed=frozenset({"503"})) == {}


def test_overload_2x_capacity(
    service_process: ServiceFactory, heavy_bundle: Path, pool: PayloadPool
) -> None:
    _check_overload(service_process, heavy_bundle, pool, seconds=12.0, p99_bound_ms=1000)


@pytest.mark.slow
def test_overload_2x_capacity_60s(
    service_process: ServiceFactory, heavy_bundle: Path, pool: PayloadPool
) -> None:
    _check_overload(
        service_process, heavy_bundle, pool, seconds=60.0, p99_bound_ms=50
    )  # a quiet machine


def test_start_up_objects_are_frozen_out_of_the_collector_while_serving(
    tiny_bundle: Path,
) -> None:
    """Full garbage collections stop every thread, the event loop included; what start-up built
    is kept out of them while the service runs (the 503 p99 under overload), and given back to
    the collector when it stops."""
    import gc

    from service.gc_freeze import FULL_COLLECTION_THRESHOLD
    from tests.service.conftest import run_server

    gc.unfreeze()
    before = gc.get_threshold()
    with run_server(tiny_bundle):
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == (*before[:2], FULL_COLLECTION_THRESHOLD)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
