"""Metric names, types and values: a fresh registry per test, and a real server's /metrics."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.errors import CaptionError, DeadlineExceeded, Overloaded
from service.metrics import BatcherMetrics, Metrics
from tests.service.conftest import RunningServer

PROMISED = {
    "caption_requests": "counter",
    "caption_request_duration_seconds": "histogram",
    "caption_queue_depth": "gauge",
    "caption_inflight_requests": "gauge",
    "caption_pending_requests": "gauge",
    "caption_queue_wait_seconds": "histogram",
    "caption_batch_size": "histogram",
    "caption_inference_duration_seconds": "histogram",
    "caption_preprocess_duration_seconds": "histogram",
    "caption_rejected": "counter",
    "caption_url_fetch_duration_seconds": "histogram",
    "caption_model_info": "gauge",
    "caption_ready": "gauge",
    "caption_cache_hits": "counter",
    "caption_cache_misses": "counter",
}


def test_batcher_observer_feeds_the_metrics() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    observer = BatcherMetrics(metrics)
    observer.queue_changed(5, 3)
    observer.batch_started(3, [0.001, 0.002, 0.004])
    metrics.count_rejection(Overloaded("full"))
    metrics.count_rejection(Overloaded("full"))
    metrics.count_rejection(DeadlineExceeded("late"))
    metrics.count_rejection(CaptionError("a server fault is not a refusal"))
    metrics.set_model("m", "1", "CPUExecutionProvider")
    metrics.set_model("m", "2", "CPUExecutionProvider")  # replaces, never two models
    assert registry.get_sample_value("caption_queue_depth") == 5
    assert registry.get_sample_value("caption_inflight_requests") == 3
    assert registry.get_sample_value("caption_batch_size_count") == 1
    assert registry.get_sample_value("caption_batch_size_sum") == 3
    assert registry.get_sample_value("caption_batch_size_bucket", {"le": "2.0"}) == 0
    assert registry.get_sample_value("caption_batch_size_bucket", {"le": "4.0"}) == 1
    assert registry.get_sample_value("caption_queue_wait_seconds_count") == 3
    assert registry.get_sample_value("caption_rejected_total", {"reason": "queue_full"}) == 2
    assert registry.get_sample_value("caption_rejected_total", {"reason": "timeout"}) == 1
    assert registry.get_sample_value("caption_rejected_total", {"reason": "internal"}) is None
    labels = {"name": "m", "version": "2", "provider": "CPUExecutionProvider"}
    assert registry.get_sample_value("caption_model_info", labels) == 1
    assert registry.get_sample_value("caption_model_info", {**labels, "version": "1"}) is None


def test_batch_size_buckets_are_powers_of_two() -> None:
    registry = CollectorRegistry()
    Metrics(registry).batch_size.observe(1)
    text = generate_latest(registry).decode()
    buckets = [
        s.labels["le"]
        for f in text_string_to_metric_families(text)
        if f.name == "caption_batch_size"
        for s in f.samples
        if s.name.endswith("_bucket")
    ]
    assert buckets == ["1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "+Inf"]


@pytest.mark.e2e
def test_served_metrics_parse_and_pass_promtool(served: RunningServer) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        from tests.service.images import png_1x1

        assert (
            client.post(
                "/caption", content=png_1x1(), headers={"Content-Type": "image/png"}
            ).status_code
            == 200
        )
        client.post("/caption", content=b"", headers={"Content-Type": "image/png"})
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name, kind in PROMISED.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, (name, families[name].type)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("caption_ready", ())] == 1
    assert samples[("caption_pending_requests", ())] == 0
    ok = ("caption_requests_total", (("code", "200"), ("endpoint", "/caption")))
    assert samples[ok] >= 1
    assert samples[("caption_rejected_total", (("reason", "invalid"),))] >= 1
    stages = {dict(k[1]).get("stage") for k in samples if k[0].startswith("caption_inference")}
    assert {"encode", "decode"} <= stages
    info = [k for k in samples if k[0] == "caption_model_info"]
    assert info and dict(info[0][1])["provider"] == "CPUExecutionProvider"

    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed (apt-get install prometheus; .ci/run does it)"
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=response.content,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
