"""The load generator against the real service (``python -m service``) on the tiny bundle."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest import generator
from loadtest.payloads import PayloadPool, find_images
from loadtest.service_proc import ServiceProcess
from loadtest.static_server import StaticServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def service(tiny_bundle: Path) -> Iterator[ServiceProcess]:
    env = {
        "CAPTION_URL_ALLOWLIST": "127.0.0.1",
        "CAPTION_LOG_LEVEL": "warning",
        "CAPTION_CACHE_SIZE": "0",
    }
    with ServiceProcess(tiny_bundle, env=env) as svc:
        yield svc


@pytest.fixture(scope="module")
def images(flickr8k_dir: Path) -> list[Path]:
    return find_images(flickr8k_dir, limit=8)


async def test_open_loop_keeps_its_schedule(service: ServiceProcess, images: list[Path]) -> None:
    pool = PayloadPool.from_images(images, "upload")
    target = generator.Target(service.base_url, timeout_s=10)
    async with generator.make_client(target) as client:
        step = await generator.open_loop(
            client, target, pool, rate=20, duration_s=2.0, arrivals="constant", progress=False
        )
    records = sorted(step.records, key=lambda r: r.scheduled)
    assert [round(r.scheduled, 6) for r in records] == [round(i / 20, 6) for i in range(40)]
    assert all(r.status == 200 for r in records)
    assert all(r.latency >= r.service_time >= 0 for r in records)
    summary = step.summary()
    assert summary["ok"] == 40 and summary["error_share"] == 0.0
    assert 15 <= summary["throughput"] <= 21
    assert summary["send_lag_ms"]["p50"] < 50
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99"}
    # /metrics scraped before and after: the service saw exactly these 40 images
    assert summary["server"]["caption_requests_by_code"] == {"200": 40}
    assert (
        sum(summary["server"]["batch_size_distribution"].values()) == summary["server"]["batches"]
    )
    assert summary["server"]["batch_size_mean"] >= 1


async def test_latency_counts_from_the_scheduled_time_when_sending_stalls(
    service: ServiceProcess, images: list[Path]
) -> None:
    """Coordinated omission: a stalled client must not make the stalled requests look fast."""
    pool = PayloadPool.from_images(images, "raw")
    target = generator.Target(service.base_url, timeout_s=10, scrape_metrics=False)

    async def stall() -> None:
        await asyncio.sleep(0.3)
        time.sleep(0.4)  # blocks the event loop: nothing can be sent from 0.3 s to 0.7 s

    async with generator.make_client(target) as client:
        step, _ = await asyncio.gather(
            generator.open_loop(
                client,
                target,
                pool,
                rate=50,
                duration_s=1.0,
                arrivals="constant",
                progress=False,
            ),
            stall(),
        )
    held = [r for r in step.records if 0.32 <= r.scheduled <= 0.65]
    assert len(held) >= 15
    for r in held:
        assert r.sent >= 0.69  # sent only once the loop was free again
        assert r.latency >= 0.69 - r.scheduled  # ... and charged for the wait
        assert r.latency - r.service_time >= 0.69 - r.scheduled - 0.01
    assert step.summary()["send_lag_ms"]["p100"] >= 300


@pytest.mark.parametrize("kind", ["raw", "base64", "url"])
async def test_every_payload_kind_gets_captions(
    service: ServiceProcess, images: list[Path], kind: str
) -> None:
    target = generator.Target(service.base_url, timeout_s=10, scrape_metrics=False)
    with StaticServer(images[0].parent) as static:
        pool = PayloadPool.from_images(images, kind, url_base=static.url_base)  # type: ignore[arg-type]
        async with generator.make_client(target) as client:
            step = await generator.closed_loop(
                client,
                target,
                pool,
                concurrency=2,
                duration_s=5.0,
                max_requests=4,
                progress=False,
            )
    assert [r.status for r in step.records] == [200] * 4


def test_cli_ramp_writes_results_json_and_png(
    service: ServiceProcess, flickr8k_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ramp.json"
    cmd = [
        sys.executable, "-m", "loadtest", "ramp", "--url", service.base_url,
        "--images", str(flickr8k_dir), "--limit-images", "8", "--start", "10", "--step", "10",
        "--max", "20", "--step-duration", "1", "--p99-bound-ms", "5000", "--out", str(out),
        "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [s["offered_rate"] for s in result["steps"]] == [10.0, 20.0]
    assert result["knee_rate"] is None and result["max_sustained_throughput"] > 5
    step = result["steps"][0]
    for key in ("throughput", "latency_ms", "errors", "rejected_503_share",
                "rejected_503_latency_ms", "send_lag_ms", "server"):  # fmt: skip
        assert key in step
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "max sustained throughput" in done.stdout


def test_cli_closed_loop(service: ServiceProcess, flickr8k_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "closed.json"
    cmd = [
        sys.executable, "-m", "loadtest", "run", "--url", service.base_url, "--mode", "closed",
        "--concurrency", "3", "--duration", "1", "--images", str(flickr8k_dir),
        "--limit-images", "4", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    (step,) = json.loads(out.read_text())["steps"]
    assert step["mode"] == "closed" and step["concurrency"] == 3 and step["ok"] > 3
