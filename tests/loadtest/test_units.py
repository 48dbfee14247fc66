"""Load generator pieces that need no service: schedules, payloads, scraping, FLOPs, plots."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loadtest import generator, promscrape
from loadtest.benchconfig import BenchConfig
from loadtest.ceiling import OfflineRow
from loadtest.flops import count_macs
from loadtest.generator import KneeCriteria, arrival_offsets, past_knee
from loadtest.payloads import PayloadPool, find_images, prepare
from loadtest.ramp import capacity
from loadtest.report import plot_steps, write_json
from loadtest.static_server import StaticServer
from loadtest.stats import RequestRecord, StepResult, StepStats


def test_constant_arrivals_are_evenly_spaced() -> None:
    offsets = arrival_offsets(20, 2.0, "constant")
    assert len(offsets) == 40
    assert np.allclose(np.diff(offsets), 0.05)


def test_poisson_arrivals_have_the_rate_and_stay_inside_the_step() -> None:
    offsets = arrival_offsets(200, 20.0, "poisson", seed=3)
    assert abs(len(offsets) / 20.0 - 200) < 200 * 0.05
    assert offsets[0] == 0.0 and max(offsets) < 20.0
    gaps = np.diff(offsets)
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.1  # exponential gaps: cv = 1
    assert offsets == arrival_offsets(200, 20.0, "poisson", seed=3)


def test_default_images_are_the_flickr8k_test_split(flickr8k_dir: Path) -> None:
    images = find_images(flickr8k_dir)
    names = set((flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split())
    assert len(images) == 1000 and {p.name for p in images} <= names
    assert find_images(flickr8k_dir, limit=3) == images[:3]


def test_payloads_carry_the_image(flickr8k_dir: Path) -> None:
    path = find_images(flickr8k_dir, limit=1)[0]
    data = path.read_bytes()
    raw = prepare(path, "raw")
    assert raw.content == data and raw.headers["Content-Type"] == "image/jpeg"
    b64 = json.loads(prepare(path, "base64").content)
    assert base64.b64decode(b64["image_base64"]) == data
    upload = prepare(path, "upload")
    assert upload.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert data in upload.content and b'name="image"' in upload.content
    url = json.loads(prepare(path, "url", url_base="http://127.0.0.1:9/").content)
    assert url == {"url": f"http://127.0.0.1:9/{path.name}"}
    with pytest.raises(ValueError):
        prepare(path, "url")
    pool = PayloadPool([raw, upload])
    assert [pool.next() for _ in range(3)] == [raw, upload, raw]


def test_static_server_serves_the_folder(flickr8k_dir: Path) -> None:
    path = find_images(flickr8k_dir, limit=1)[0]
    with StaticServer(path.parent) as server:
        assert server.url_base.startswith("http://127.0.0.1:")
        response = httpx.get(f"{server.url_base}/{path.name}", trust_env=False)
        assert response.status_code == 200 and response.content == path.read_bytes()
        assert httpx.get(f"{server.url_base}/nope.jpg", trust_env=False).status_code == 404


def _exposition(batch_sizes: list[int], waits: list[float], codes: list[str]) -> str:
    registry = CollectorRegistry()
    batch = Histogram("caption_batch_size", "b", buckets=(1, 2, 4, 8, 16), registry=registry)
    wait = Histogram(
        "caption_queue_wait_seconds", "w", buckets=(0.001, 0.01, 0.1), registry=registry
    )
    requests = Counter("caption_requests", "r", ["endpoint", "code"], registry=registry)
    rejected = Counter("caption_rejected", "x", ["reason"], registry=registry)
    for size in batch_sizes:
        batch.observe(size)
    for seconds in waits:
        wait.observe(seconds)
    for code in codes:
        requests.labels("/caption", code).inc()
        if code == "503":
            rejected.labels("queue_full").inc()
    return generate_latest(registry).decode()


def test_promscrape_reads_what_happened_between_two_scrapes() -> None:
    before = promscrape.parse(_exposition([8], [0.05], ["200"]))
    after = promscrape.parse(
        _exposition([8, 1, 2, 3, 16, 16], [0.05, 0.0005, 0.005, 0.005], ["200", "200", "503"])
    )
    summary = promscrape.summarise_delta(after - before)
    assert summary.batches == 5
    assert summary.batch_size_mean == pytest.approx((1 + 2 + 3 + 16 + 16) / 5)
    assert summary.batch_size_distribution == {
        "1": 1,
        "2": 1,
        "4": 1,
        "8": 0,
        "16": 2,
        "+Inf": 0,
    }
    assert summary.queue_wait_mean_ms == pytest.approx(1000 * 0.0105 / 3)
    assert summary.queue_wait_p50_ms is not None and 1.0 < summary.queue_wait_p50_ms <= 10.0
    assert summary.caption_requests_by_code == {"200": 1, "503": 1}
    assert summary.rejected_by_reason == {"queue_full": 1}


def test_histogram_quantile_interpolates_like_promql() -> None:
    hist = promscrape.Histogram((1.0, 2.0, float("inf")), (0.0, 10.0, 10.0), 15.0)
    assert hist.quantile(0.5) == pytest.approx(1.5)
    assert hist.mean == 1.5


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_flop_counter_counts_conv_matmul_and_gemm(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.zeros((16, 3, 3, 3), np.float32), "w")
    dw = numpy_helper.from_array(np.zeros((16, 1, 3, 3), np.float32), "dw")
    m = numpy_helper.from_array(np.zeros((16, 10), np.float32), "m")
    g = numpy_helper.from_array(np.zeros((10, 5), np.float32), "g")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["y", "dw"], ["z"], group=16, pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["z"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "m"], ["h"]),
        helper.make_node("Gemm", ["h", "g"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 5])],
        initializer=[w, dw, m, g],
    )
    cost = count_macs(_save(graph, tmp_path / "g.onnx"))
    conv = 16 * 16 * 16 * 3 * 9 + 16 * 16 * 16 * 1 * 9
    assert cost.by_op == {"Conv": conv, "MatMul": 16 * 10, "Gemm": 10 * 5}
    assert cost.uncounted == {} and cost.flops == 2 * (conv + 160 + 50)


def test_report_writes_json_and_png(tmp_path: Path) -> None:
    steps = [
        StepStats(
            offered_rate=r,
            throughput=min(r, 30.0),
            latency_ms={"p50": 10.0 + r, "p95": 20.0 + r, "p99": 30.0 + r},
        )
        for r in (10.0, 20.0, 40.0)
    ]
    png = plot_steps({"batching": steps, "batch 1": steps[:2]}, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = write_json(tmp_path / "r.json", {"path": tmp_path, "n": np.int64(3)})
    assert json.loads(out.read_text())["n"] == 3


def test_knee_criteria() -> None:
    base = StepStats(
        offered_rate=50.0, offered_actual=50.0, throughput=49.0, latency_ms={"p99": 100.0}
    )
    within = KneeCriteria(p99_bound_ms=200)
    assert past_knee(base, within) is None
    assert "throughput" in str(past_knee(replace(base, throughput=40.0), within))
    assert "p99" in str(past_knee(base, KneeCriteria(p99_bound_ms=50)))
    assert "error" in str(past_knee(replace(base, error_share=0.2), within))


def _open_step(rate: float, answered_at: list[float], seconds: float = 8.0) -> StepResult:
    sent = [i / rate for i in range(round(rate * seconds))]
    records = [RequestRecord(t, t, done, 200) for t, done in zip(sent, answered_at, strict=True)]
    return StepResult("open", seconds, records, offered_rate=rate, arrivals="constant")


def test_throughput_is_the_rate_served_not_charged_for_latency() -> None:
    # a service that keeps up at 10/s, each answer 1 s late: it served 10/s
    kept_up = _open_step(10.0, [i / 10 + 1.0 for i in range(80)]).stats()
    assert kept_up.throughput == pytest.approx(10.0, rel=0.05)
    assert kept_up.throughput_with_drain == pytest.approx(80 / 8.9)  # every answer: 10% low
    assert past_knee(kept_up, KneeCriteria(p99_bound_ms=2000)) is None
    # 20/s offered to a service that answers 10/s (its queue grows): 10/s, past the knee
    behind = _open_step(20.0, [0.1 * (i + 1) for i in range(160)]).stats()
    assert behind.offered_window == pytest.approx(20.0, rel=0.05)
    assert behind.throughput == pytest.approx(10.0, rel=0.05)
    assert "throughput" in str(past_knee(behind, KneeCriteria(p99_bound_ms=60_000)))


class _FakeStep:
    def __init__(self, stats: StepStats) -> None:
        self._stats = stats

    def stats(self) -> StepStats:
        return self._stats


async def test_bench_knee_search_lets_the_longer_steps_decide(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An 8 s coarse step caught by a burst stops the coarse ramp below the service's capacity
    (110/s); the finer 15 s steps go on through that rate until one bends, and they set the max
    sustained rate."""
    held = 110.0

    async def open_loop(*_: object, rate: float, duration_s: float, **__: object) -> _FakeStep:
        burst = duration_s < 10 and rate >= 104  # the short step fell behind for a moment
        return _FakeStep(
            StepStats(
                offered_rate=rate,
                offered_window=rate,
                duration_s=duration_s,
                throughput=min(rate, held) * (0.9 if burst else 1.0),
                latency_ms={"p99": 2000.0 if rate > held else 300.0},
            )
        )

    monkeypatch.setattr(generator, "open_loop", open_loop)
    cfg = BenchConfig(bundle_dir=tmp_path, images=None, out_dir=tmp_path, step_s=8, fine_step_s=15)
    cap = await capacity(None, None, None, cfg, ceiling=120.0, bound_ms=1000.0)  # type: ignore[arg-type]
    coarse = [s.offered_rate for s in cap.steps if s.duration_s == 8]
    fine = [s.offered_rate for s in cap.steps if s.duration_s == 15]
    assert coarse[-1] == 108  # where the coarse ramp (steps of 12/s) stopped
    assert fine == pytest.approx([99, 102, 105, 108, 111])  # through 108 until a step bent
    assert cap.max_sustained_rate == pytest.approx(108.0)  # held by a 15 s step
    assert cap.max_sustained_throughput == pytest.approx(108.0)
    assert "p99" in str(cap.knee_reason)  # the finer ramp bent past the capacity (at 111/s)


async def test_raw_client_reads_chunked_and_closed_responses() -> None:
    import asyncio

    from loadtest.rawhttp import RawClient

    replies = [
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n',
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    ]
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while replies:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            seen.append(await reader.readexactly(length))
            reply = replies.pop(0)
            writer.write(reply)
            await writer.drain()
            if b"close" in reply:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, RawClient(f"http://127.0.0.1:{port}") as client:
        first = await client.post("/caption", b"abc", {"Content-Type": "image/jpeg"})
        second = await client.post("/caption", b"xy", {})
    assert (first.status, first.body) == (200, b'{"a":1}')
    assert (second.status, second.body) == (503, b"{}")
    assert seen == [b"abc", b"xy"]


async def test_raw_client_retries_once_when_the_server_dropped_a_kept_alive_connection() -> None:
    import asyncio

    from loadtest.rawhttp import RawClient

    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # closes without saying so: the client's pooled connection is stale

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, RawClient(f"http://127.0.0.1:{port}") as client:
        for _ in range(3):
            response = await client.post("/caption", b"x", {})
            assert (response.status, response.body) == (200, b"ok")
            await asyncio.sleep(0.05)
    assert connections == 3


def test_sweep_grid_is_the_product_of_the_settings() -> None:
    from loadtest.sweep import grid

    assert grid([]) == [{}]
    assert grid(["CAPTION_MAX_BATCH_SIZE=1,8", "CAPTION_MAX_WAIT_MS=2"]) == [
        {"CAPTION_MAX_BATCH_SIZE": "1", "CAPTION_MAX_WAIT_MS": "2"},
        {"CAPTION_MAX_BATCH_SIZE": "8", "CAPTION_MAX_WAIT_MS": "2"},
    ]
    with pytest.raises(SystemExit):
        grid(["MAX_BATCH_SIZE=1"])


def test_queue_model_without_batching_is_the_textbook_md1_queue() -> None:
    """Batch cap 1 and a constant 10 ms per image is M/D/1: at 50% load the mean time in the
    system is d + rho d / (2 (1 - rho)) = 10 + 5 = 15 ms (Pollaczek-Khinchine)."""
    from loadtest.queue_model import simulate

    run = simulate(50.0, lambda n: 0.010 * n, max_batch=1, arrivals=200_000, seed=1)
    assert float(run.latencies_s.mean()) == pytest.approx(0.015, rel=0.03)
    assert run.busy_fraction == pytest.approx(0.5, rel=0.02)
    assert set(run.batch_sizes.tolist()) == {1}


def test_queue_model_batches_what_waits_and_keeps_up_where_single_images_cannot() -> None:
    from loadtest.queue_model import ideal_p99, simulate

    def fixed_cost(n: int) -> float:  # 8 ms per batch + 2 ms per image: 100/s at batch 1
        return 0.008 + 0.002 * n

    run = simulate(300.0, fixed_cost, max_batch=16, arrivals=50_000)
    assert run.batch_sizes.max() > 1 and float(np.percentile(run.latencies_s, 99)) < 0.2
    rows = [_row(n, n / fixed_cost(n)) for n in (1, 2, 4, 8, 16)]
    best = ideal_p99(rows, 300.0, arrivals=50_000)
    assert best is not None and best.max_batch > 2  # caps 1 and 2 (100/s, 167/s) fall behind
    assert ideal_p99(rows, 1000.0) is None  # more than any batch size can serve (16: 400/s)


def test_queue_model_runs_batches_side_by_side() -> None:
    """Two single-image servers at 20 ms each serve 100/s between them: at 50/s they are busy
    half the time, and no request waits much longer than its own 20 ms."""
    from loadtest.queue_model import batch_seconds, simulate

    rows = [_row(1, 100.0, workers=2)]  # both servers together
    per_server = batch_seconds(rows, servers=2)
    assert per_server(1) == pytest.approx(0.020)
    run = simulate(50.0, per_server, max_batch=1, servers=2, arrivals=100_000)
    assert run.busy_fraction == pytest.approx(0.5, rel=0.03)
    assert float(np.median(run.latencies_s)) == pytest.approx(0.020, rel=0.01)


def test_p99_floor_takes_the_kinder_layout() -> None:
    from loadtest.ratios import p99_floor

    one = [_row(n, t) for n, t in ((1, 50.0), (4, 100.0), (8, 110.0))]
    side = [_row(r.batch_size, 1.3 * r.throughput, workers=2) for r in one]
    alone = p99_floor(one, 85.0, idle_p50_ms=25.0)
    both = p99_floor(one, 85.0, idle_p50_ms=25.0, parallel_rows=side)
    assert alone is not None and both is not None
    assert (alone.ideal.servers, both.ideal.servers) == (1, 2)
    assert both.p99_floor_ms < alone.p99_floor_ms


def test_p99_floor_adds_the_time_outside_the_model_to_the_ideal_p99() -> None:
    from loadtest.queue_model import ideal_p99
    from loadtest.ratios import p99_floor

    rows = [_row(4, 120.0), _row(1, 50.0), _row(2, 80.0)]
    floor = p99_floor(rows, 100.0, idle_p50_ms=25.0)
    ideal = ideal_p99(rows, 100.0)
    assert floor is not None and ideal is not None
    assert floor.outside_model_ms == pytest.approx(5.0)  # idle 25 ms - 1 / (50/s)
    assert floor.p99_floor_ms == pytest.approx(ideal.p99_ms + 5.0)
    assert floor.ratio == pytest.approx(floor.p99_floor_ms / 25.0)
    assert floor.ideal.max_batch == 4  # only batches of 4 (120/s) keep up with 100/s
    assert floor.ideal.p99_ms > 2 * 1000 * 4 / 120.0  # bursts: more than two full batches
    assert p99_floor(rows, 130.0, idle_p50_ms=25.0) is None  # beyond every offline figure


def _row(batch_size: int, throughput: float, *, workers: int = 1) -> OfflineRow:
    return OfflineRow(batch_size, workers, throughput, rounds=[throughput])


def test_results_come_back_from_json_as_the_dataclasses_that_wrote_them() -> None:
    from dataclasses import asdict

    from loadtest.serde import from_dict

    stats = StepStats(
        offered_rate=5.0,
        latency_ms={"p50": 1.0},
        errors={"503:overloaded": 2},
        server=promscrape.ServerStats(batches=3, mean_ms_per_batch={"encode": 4}),
        client=None,
    )
    back = from_dict(StepStats, json.loads(json.dumps(asdict(stats))))
    assert back == stats and isinstance(back.server, promscrape.ServerStats)
    cfg = BenchConfig(bundle_dir=Path("b"), images=None, out_dir=Path("o"), batch_sizes=(1, 4))
    assert from_dict(BenchConfig, json.loads(json.dumps(asdict(cfg), default=str))) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        from_dict(StepStats, {"offered_rate": 1.0, "renamed": 2})


def test_py_spy_samples_summarise_into_a_profile_that_survives_json() -> None:
    from dataclasses import asdict

    from loadtest.profiling import Profile, summarise_collapsed
    from loadtest.serde import from_dict

    text = (
        "thread (1): model_0;run (a.py:1);Session.run (ort.py:9) 30\n"
        "thread (2): decode_0;run (a.py:1);decode (p.py:3) 10\n"
    )
    profile = summarise_collapsed(text)
    assert profile.samples == 40 and profile.self_share[0] == ("Session.run (ort.py)", 0.75)
    assert ("run (a.py)", 1.0) in profile.inclusive
    assert from_dict(Profile, json.loads(json.dumps(asdict(profile)))) == profile


def test_the_report_keeps_its_history_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadtest import benchdoc

    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\nold run\n\n## History\n\n- a hand-kept line\n")
    monkeypatch.setattr(benchdoc, "lines", lambda results: ["# Benchmarks", "", "new run"])
    benchdoc.write(report, None)  # type: ignore[arg-type]
    assert report.read_text() == "# Benchmarks\n\nnew run\n\n## History\n\n- a hand-kept line\n"
