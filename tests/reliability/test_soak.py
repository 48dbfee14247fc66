"""Soak: many requests through ``python -m service``; memory and file descriptors stay flat.

After a warm-up, requests run in rounds (closed loop, 8 clients, every input form plus bad
inputs); the server's RSS after each round stays within 5% of the post-warm-up value and its
open file descriptors do not grow. 1,000 requests in CI, 10,000 with ``--run-slow``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loadtest.generator import LoadClient, Target, closed_loop
from loadtest.payloads import PayloadPool, PreparedRequest, prepare
from tests.reliability.conftest import (
    ServiceFactory,
    assert_healthy,
    open_fds,
    rss_bytes,
    server_errors,
)
from tests.service import images

pytestmark = pytest.mark.e2e

ROUNDS = 5
WARMUP = 200


@pytest.fixture(scope="module")
def mixed_pool(flickr8k_dir: Path) -> PayloadPool:
    paths = sorted((flickr8k_dir / "images").glob("*.jpg"))[:8]
    good = [prepare(p, kind) for p in paths for kind in ("raw", "upload", "base64")]
    png = images.encode(images.noise_rgb(300, 200, seed=9), "PNG")
    odd = [
        PreparedRequest("png", png, {"Content-Type": "image/png"}),
        PreparedRequest("junk", b"not an image" * 50, {"Content-Type": "image/jpeg"}),
        PreparedRequest(
            "bad-json", b'{"image_base64": "%%"}', {"Content-Type": "application/json"}
        ),
        PreparedRequest("bomb", images.png_bomb_header(), {"Content-Type": "image/png"}),
    ]
    return PayloadPool(good + odd)


async def _soak(url: str, pool: PayloadPool, pid: int, total: int) -> dict[str, list[int]]:
    target = Target(url, timeout_s=30.0, scrape_metrics=False)
    rss: list[int] = []
    fds: list[int] = []
    statuses: list[int] = []
    async with LoadClient(target, "raw", max_connections=8) as client:

        async def run(count: int) -> None:
            step = await closed_loop(
                client,
                target,
                pool,
                concurrency=8,
                duration_s=3600,
                max_requests=count,
                progress=False,
            )
            statuses.extend(r.status for r in step.records)

        await run(WARMUP)
        rss.append(rss_bytes(pid))
        fds.append(open_fds(pid))
        for _ in range(ROUNDS):
            await run(total // ROUNDS)
            rss.append(rss_bytes(pid))
            fds.append(open_fds(pid))
    return {"rss": rss, "fds": fds, "statuses": statuses}


def _check_soak(service_process: ServiceFactory, pool: PayloadPool, total: int) -> None:
    proc = service_process(CAPTION_LOG_LEVEL="warning")
    out = asyncio.run(_soak(proc.url, pool, proc.process.pid, total))
    rss, fds = out["rss"], out["fds"]
    print("RSS MB", [round(r / 2**20, 1) for r in rss], "fds", fds)
    assert len(out["statuses"]) == WARMUP + total
    assert set(out["statuses"]) <= {200, 400, 413, 422}, set(out["statuses"])
    baseline = rss[0]
    assert all(abs(r - baseline) <= 0.05 * baseline for r in rss[1:]), rss
    assert max(fds[1:]) <= fds[0] + 2, fds  # no descriptor leak (one racing socket at most)
    assert_healthy(proc.url, pool.requests[0].content)
    assert server_errors(proc.url) == {}


def test_soak_1000(service_process: ServiceFactory, mixed_pool: PayloadPool) -> None:
    _check_soak(service_process, mixed_pool, 1000)


@pytest.mark.slow
def test_soak_10000(service_process: ServiceFactory, mixed_pool: PayloadPool) -> None:
    _check_soak(service_process, mixed_pool, 10_000)
