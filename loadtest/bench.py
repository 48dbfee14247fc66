"""``make bench``: one command, one run, one bundle and one image set, measured side by side.

    (a) offline in-process pipeline (decode + resize + encode + greedy decode) at its best batch
        size, the better of one pipeline on every core and single-threaded pipelines side by
        side (as the service runs its concurrent batches): the ceiling;
    (b) the service over HTTP (``python -m service`` subprocess) with batching: max sustained
        throughput (open-loop ramp to the knee), p50/p99 at 50/80/100% of it, and 2x overload;
        the 100% step runs in turns with (a) at its best configuration, and b/a is the ratio of
        their medians;
    (c) the same service with ``CAPTION_MAX_BATCH_SIZE=1``;
    (d) the naive baseline (``loadtest.baseline``) on a few images, one at a time;
    (e) int8 encoder against fp32, when the bundle has one;
    (f) roofline: encoder FLOPs per image x encoder throughput / measured float32 peak.

Results go to ``<out-dir>/benchmarks.md`` (+ ``.json`` and ``.png``); ``--quick`` runs every phase
briefly (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from loadtest import benchdoc, flops, generator
from loadtest.baseline import load_baseline, measure
from loadtest.payloads import PayloadPool, find_images
from loadtest.profiling import CpuMeter, PySpy, schedstat
from loadtest.report import plot_steps, write_json
from loadtest.service_proc import ServiceProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
OfflineRun = Callable[[], float]
"""One run of the offline pipeline in a fixed configuration: its images/s."""
KNEE_BOUND_X_IDLE = 20.0
KNEE_BOUND_MIN_MS = 1000.0
"""A ramp step is past the knee when the throughput stops following the offered rate, errors
pass 1%, or p99 exceeds max(20 x idle p50, 1 s): a queue growing through the step. Max sustained
throughput is about keeping up; latency at 50/80/100% of it is reported (and the 3 x idle target
at 80% checked) separately."""


@dataclass
class BenchConfig:
    bundle_dir: Path
    images: Path | None
    out_dir: Path
    quick: bool = False
    offline_images: int = 128
    """Images per batch size in (a) and (e)."""
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    offline_rounds: int = 2
    """Rounds over every batch size in (a) and (e); each size keeps its best round."""
    offline_workers: int = 2
    """(a) and (e) also run this many single-threaded pipelines side by side (the service's
    default: ``CAPTION_MAX_CONCURRENT_BATCHES`` batches on one core each); the ceiling is the
    better of that and one pipeline on every core. 1 = one pipeline only."""
    nice: int = -15
    """Scheduling priority of the benchmark and the service it starts (inherited): on a shared
    machine a negative value keeps other processes from distorting the figures (needs root;
    otherwise the bench runs at its current priority and says so)."""
    idle_s: float = 6.0
    """Closed loop, one client: the idle single-request latency."""
    step_s: float = 8.0
    """Duration of each ramp step."""
    level_s: float = 15.0
    """Duration of the 50/80/100% and 2x runs."""
    paired_rounds: int = 3
    """At (b)'s max sustained rate, this many turns of: the offline pipeline at (a)'s best
    configuration, then a 100% step of the service. b/a is the ratio of their medians: noise on
    a shared machine hits both alike, where (a)'s sweep keeps each size's best round (a lucky
    burst) and the ramp's best step is one run."""
    naive_images: int = 5
    profile: bool = True
    """Sample the service with py-spy during an extra step at its max sustained rate."""
    coarse_steps: int = 10
    """The coarse ramp climbs in steps of ceiling / coarse_steps."""
    fine_steps: int = 3
    """Steps of the finer ramp between the last good coarse step and the knee (0: none); it
    goes on past the knee's rate at the same pitch until one of its steps bends."""
    fine_step_s: float = 15.0
    """Duration of each finer step. Near the knee the batches the service forms take seconds
    to settle and an 8 s step is noisy: on models/default, 20 s steps held 105-111/s within
    every criterion where the 8 s ramp had bent at 108/s offered; and one 8 s step, hit by a
    Poisson burst, could stop the coarse ramp below what 15 s steps then held."""
    max_rate: float | None = None
    """Cap on any offered rate (quick mode keeps the generator inside its own limits)."""
    service_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchConfig:
        cfg = cls(bundle_dir=args.bundle, images=args.images, out_dir=args.out_dir)
        cfg.profile = not args.no_profile
        cfg.nice = args.nice
        if args.quick:
            cfg.quick = True
            cfg.offline_images, cfg.batch_sizes, cfg.offline_rounds = 16, (1, 4), 1
            cfg.idle_s, cfg.step_s, cfg.level_s, cfg.fine_step_s = 1.5, 1.5, 1.5, 1.5
            cfg.naive_images, cfg.max_rate, cfg.paired_rounds = 1, 120.0, 1
            cfg.coarse_steps, cfg.fine_steps = 3, 0
        for item in args.service_env or []:
            key, _, value = item.partition("=")
            cfg.service_env[key] = value
        return cfg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "default")
    p.add_argument("--images", type=Path, default=None, help="default: Flickr8k test images")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "docs")
    p.add_argument("--quick", action="store_true", help="every phase, briefly (smoke test)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of (b)")
    p.add_argument(
        "--nice",
        type=int,
        default=-15,
        help="scheduling priority for the bench and its service (negative needs root; "
        "default -15 shields the figures from other processes on a shared machine)",
    )
    p.add_argument(
        "--service-env",
        action="append",
        metavar="CAPTION_X=V",
        help="extra service settings for (b) and (c) (repeatable)",
    )


# --- (a), (e): in process ---------------------------------------------------------------------


def _caption_all(model: Any, blobs: list[bytes], batch_size: int) -> list[np.ndarray]:
    """Decode, encode and greedily caption ``blobs`` in batches; return the pixel batches."""
    request = model.request()
    arrays = []
    for i in range(0, len(blobs), batch_size):
        chunk = blobs[i : i + batch_size]
        x = np.stack([model.preprocess(b) for b in chunk])
        arrays.append(x)
        model.caption(model.encode(x), [request] * len(chunk))
    return arrays


def _end_to_end(model: Any, blobs: list[bytes], batch_size: int) -> tuple[float, list[np.ndarray]]:
    """End-to-end images/s (decode..caption) at one batch size, after a warm-up batch; and the
    pixel batches."""
    _caption_all(model, blobs[:batch_size], batch_size)  # warm-up
    start = time.perf_counter()
    arrays = _caption_all(model, blobs, batch_size)
    return len(blobs) / (time.perf_counter() - start), arrays


def _offline(model: Any, blobs: list[bytes], batch_size: int) -> dict[str, float]:
    """End-to-end images/s (decode..caption) and encoder-only images/s at one batch size."""
    e2e, arrays = _end_to_end(model, blobs, batch_size)
    start = time.perf_counter()
    for x in arrays:
        model.encode(x)
    encoder = len(blobs) / (time.perf_counter() - start)
    return {"batch_size": batch_size, "throughput": e2e, "encoder_throughput": encoder}


def _offline_side_by_side(models: list[Any], blobs: list[bytes], batch_size: int) -> float:
    """End-to-end images/s of one single-threaded pipeline per model, each on its share of
    ``blobs``, all at once (ONNX Runtime and image decoding release the GIL)."""
    shares = [blobs[i :: len(models)] for i in range(len(models))]
    for model, share in zip(models, shares, strict=True):
        _caption_all(model, share[:batch_size], batch_size)  # warm-up
    with ThreadPoolExecutor(max_workers=len(models)) as pool:
        start = time.perf_counter()
        runs = [
            pool.submit(_caption_all, m, share, batch_size)
            for m, share in zip(models, shares, strict=True)
        ]
        for run in runs:
            run.result()
        return len(blobs) / (time.perf_counter() - start)


def offline_rerun(cfg: BenchConfig, blobs: list[bytes], best: dict[str, Any]) -> OfflineRun:
    """(a) again at its best configuration (batch size and layout), as often as asked."""
    from service.model import CaptionModel

    size, workers = int(best["batch_size"]), int(best.get("workers", 1))
    if workers > 1:
        models = [CaptionModel.load(cfg.bundle_dir, intra_op_threads=1) for _ in range(workers)]
        return lambda: _offline_side_by_side(models, blobs, size)
    model = CaptionModel.load(cfg.bundle_dir)
    return lambda: _end_to_end(model, blobs, size)[0]


def offline_phase(cfg: BenchConfig, blobs: list[bytes], *, use_int8: bool) -> dict[str, Any]:
    from service.model import CaptionModel

    model = CaptionModel.load(cfg.bundle_dir, use_int8=use_int8)
    workers = [
        CaptionModel.load(cfg.bundle_dir, use_int8=use_int8, intra_op_threads=1)
        for _ in range(cfg.offline_workers if cfg.offline_workers > 1 else 0)
    ]
    trials: dict[int, list[dict[str, float]]] = {size: [] for size in cfg.batch_sizes}
    side: dict[int, list[float]] = {size: [] for size in cfg.batch_sizes}
    for _ in range(cfg.offline_rounds):  # rounds interleave the sizes: noise hits them alike
        for size in cfg.batch_sizes:
            trials[size].append(_offline(model, blobs, size))
            if workers:
                side[size].append(_offline_side_by_side(workers, blobs, size))
    kind = "int8" if use_int8 else "fp32"
    rows: list[dict[str, Any]] = []
    parallel_rows: list[dict[str, Any]] = []
    for size, runs in trials.items():
        rows.append(
            {
                "batch_size": size,
                "workers": 1,
                "throughput": max(r["throughput"] for r in runs),
                "encoder_throughput": max(r["encoder_throughput"] for r in runs),
                "rounds": [round(r["throughput"], 2) for r in runs],
            }
        )
        line = f"  {kind} batch {size}: {rows[-1]['throughput']:.1f} img/s end to end"
        if workers:
            parallel_rows.append(
                {
                    "batch_size": size,
                    "workers": len(workers),
                    "throughput": max(side[size]),
                    "rounds": [round(t, 2) for t in side[size]],
                }
            )
            line += f" ({len(workers)} x 1 thread: {parallel_rows[-1]['throughput']:.1f})"
        print(
            f"{line}, encoder {rows[-1]['encoder_throughput']:.1f} img/s (best of "
            f"{cfg.offline_rounds})",
            flush=True,
        )
    best = max([*rows, *parallel_rows], key=lambda r: r["throughput"])
    best_enc = max(rows, key=lambda r: r["encoder_throughput"])
    sample = model.caption_images(
        np.stack([model.preprocess(b) for b in blobs[:3]]), [model.request()] * 3
    )
    return {
        "int8": use_int8,
        "rows": rows,
        "parallel_rows": parallel_rows,
        "best": best,
        "best_encoder": best_enc,
        "sample_captions": [c[0].text for c in sample],
    }


def roofline_phase(cfg: BenchConfig, offline: dict[str, Any], peak_before: float) -> dict[str, Any]:
    """FLOPs from the ONNX graphs; the peak is the best of two measurements (before and after
    the offline runs), since other processes on a shared machine can only lower it."""
    from service.manifest import load_manifest

    manifest = load_manifest(cfg.bundle_dir)
    enc = flops.count_macs(cfg.bundle_dir / manifest.encoder.file)
    dec = flops.count_macs(cfg.bundle_dir / manifest.decoder.file)
    size = 1024 if cfg.quick else 2048
    numpy_peak = max(peak_before, flops.measure_peak_gflops(size, repeats=10))
    ort_peak = flops.measure_peak_gflops_ort(size)
    peak = max(numpy_peak, ort_peak)
    enc_tput = offline["best_encoder"]["encoder_throughput"]
    e2e_tput = offline["best"]["throughput"]
    return {
        "encoder_gflops_per_image": enc.flops / 1e9,
        "encoder_macs_by_op": enc.by_op,
        "encoder_uncounted_nodes": enc.uncounted,
        "decoder_mflops_per_step": dec.flops / 1e6,
        "peak_gflops": peak,
        "peak_gflops_numpy": numpy_peak,
        "peak_gflops_onnxruntime": ort_peak,
        "encoder_achieved_gflops": enc.flops * enc_tput / 1e9,
        "encoder_fraction_of_peak": enc.flops * enc_tput / 1e9 / peak,
        "pipeline_encoder_fraction_of_peak": enc.flops * e2e_tput / 1e9 / peak,
    }


# --- (b), (c): the service over HTTP ----------------------------------------------------------


async def _capacity(
    client: Any,
    target: generator.Target,
    pool: PayloadPool,
    cfg: BenchConfig,
    *,
    ceiling: float,
    bound_ms: float,
) -> dict[str, Any]:
    """A coarse ramp in steps of ceiling / coarse_steps, then a finer one with longer steps from
    the last good step on, through the knee's rate, until one of them bends. Max sustained =
    best throughput of a step within every criterion, among the finer steps where any held."""
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
    fine_good: list[dict[str, Any]] = []
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
            # the longer steps decide where they held; the short ones only where none did
            fine_good = [s for s in second.summaries if s["past_knee"] is None]
    good_steps = fine_good or [s for s in steps if s["past_knee"] is None]
    best = max(good_steps, key=lambda s: s["throughput"]) if good_steps else None
    steps.sort(key=lambda s: s["offered_rate"])
    return {
        "criteria": first.criteria,
        "steps": steps,
        "max_sustained_throughput": best["throughput"] if best else None,
        "max_sustained_rate": best["offered_rate"] if best else None,
        "knee_reason": knee_reason,
    }


async def _level(
    client: generator.LoadClient,
    target: generator.Target,
    pool: PayloadPool,
    cfg: BenchConfig,
    pid: int,
    *,
    rate: float,
    seed: int,
) -> dict[str, Any]:
    """One open-loop step at ``rate``, with the CPU the service and the generator used and
    waited for."""
    sched0 = schedstat(pid), schedstat()
    step = await generator.open_loop(
        client, target, pool, rate=rate, duration_s=cfg.level_s, seed=seed, progress=not cfg.quick
    )
    sched1 = schedstat(pid), schedstat()
    summary = step.summary()
    summary["cpu_wait"] = {
        who: {"cpu_s": after[0] - before[0], "waited_for_cpu_s": after[1] - before[1]}
        for who, before, after in (
            ("service", sched0[0], sched1[0]),
            ("generator", sched0[1], sched1[1]),
        )
    }
    print("  " + generator.step_line(summary), flush=True)
    return summary


async def _paired_levels(
    level: Callable[..., Awaitable[dict[str, Any]]],
    *,
    rounds_asked: int,
    rate: float,
    offline: OfflineRun,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The 100% level (``level(rate=, seed=)``), ``rounds_asked`` times, each after a run of the
    offline pipeline: returns the step with the median throughput and the paired figures."""
    rounds: list[tuple[float, dict[str, Any]]] = []
    for i in range(rounds_asked):
        ceiling = offline()  # the service is idle meanwhile
        print(f"  paired round {i + 1}: offline {ceiling:.1f} img/s", flush=True)
        rounds.append((ceiling, await level(rate=rate, seed=10 + i)))
    served = sorted(rounds, key=lambda r: r[1]["throughput"])
    paired = {
        "rate": rate,
        "rounds": [
            {
                "offline": a,
                "service": s["throughput"],
                "p50_ms": s["latency_ms"].get("p50"),
                "p99_ms": s["latency_ms"].get("p99"),
            }
            for a, s in rounds
        ],
        "offline_median": statistics.median(a for a, _ in rounds),
        "service_median": statistics.median(s["throughput"] for _, s in rounds),
    }
    return served[len(served) // 2][1], paired


async def _service_run(
    cfg: BenchConfig,
    pool: PayloadPool,
    env: dict[str, str],
    ceiling: float,
    offline: OfflineRun | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"env": env}
    env.setdefault("CAPTION_LOG_LEVEL", "warning")  # no access log line per request under load
    # greedy, like the offline ceiling (a) and the naive baseline (d): the same work in each
    env.setdefault("CAPTION_DEFAULT_BEAM_SIZE", "1")
    with ServiceProcess(cfg.bundle_dir, env=env) as svc:
        target = generator.Target(svc.base_url, timeout_s=60.0)
        async with generator.make_client(target) as client:
            await generator.closed_loop(
                client, target, pool, concurrency=2, duration_s=1.0, progress=False
            )  # warm connections and code paths
            idle = (
                await generator.closed_loop(
                    client, target, pool, concurrency=1, duration_s=cfg.idle_s, progress=False
                )
            ).summary()
            out["idle"] = idle
            idle_p50 = idle["latency_ms"]["p50"]
            bound = max(KNEE_BOUND_X_IDLE * idle_p50, KNEE_BOUND_MIN_MS)
            print(
                f"  idle latency p50 {idle_p50:.1f} ms; knee bound p99 <= {bound:.0f} ms",
                flush=True,
            )
            cap = await _capacity(client, target, pool, cfg, ceiling=ceiling, bound_ms=bound)
            out["capacity"] = cap
            best = cap["max_sustained_throughput"] or cap["steps"][0]["throughput"]
            print(f"  max sustained throughput {best:.1f}/s", flush=True)
            levels: dict[str, Any] = {}
            assert svc.pid is not None
            level = functools.partial(_level, client, target, pool, cfg, svc.pid)
            for frac in (0.5, 0.8, 1.0, 2.0):
                rate = max(0.5, frac * best)
                if frac == 1.0 and offline is not None:
                    levels["1"], out["paired"] = await _paired_levels(
                        level, rounds_asked=cfg.paired_rounds, rate=rate, offline=offline
                    )
                    continue
                levels[f"{frac:g}"] = await level(rate=rate, seed=int(frac * 10))
            out["levels"] = levels
            if cfg.profile:
                out["profile"] = await _profiled_step(client, target, pool, cfg, svc, best)
    return out


async def _profiled_step(
    client: generator.LoadClient,
    target: generator.Target,
    pool: PayloadPool,
    cfg: BenchConfig,
    svc: ServiceProcess,
    rate: float,
) -> dict[str, Any]:
    """One more step at ``rate`` with py-spy sampling the service (kept out of the figures)."""
    assert svc.pid is not None
    spy = PySpy(svc.pid, cfg.level_s, Path(tempfile.mkdtemp()) / "service.pyspy.txt")
    if not spy.available:
        return {"available": False}
    step = await generator.open_loop(
        client, target, pool, rate=rate, duration_s=cfg.level_s, seed=77, progress=False
    )
    profile = spy.finish()
    profile["step"] = {k: step.summary()[k] for k in ("offered_rate", "throughput", "latency_ms")}
    return profile


def service_phase(
    cfg: BenchConfig,
    pool: PayloadPool,
    ceiling: float,
    batching: bool,
    offline: OfflineRun | None = None,
) -> dict[str, Any]:
    env = dict(cfg.service_env)
    if not batching:
        env["CAPTION_MAX_BATCH_SIZE"] = "1"
    meter = CpuMeter().start()
    out = asyncio.run(_service_run(cfg, pool, env, ceiling, offline))
    out["cpu"] = meter.read()
    return out


def _greedy_captions(cfg: BenchConfig, blobs: list[bytes]) -> list[str]:
    """What the ONNX model says greedily for these images (to check the baseline's weights)."""
    from service.model import CaptionModel

    model = CaptionModel.load(cfg.bundle_dir)
    x = np.stack([model.preprocess(b) for b in blobs])
    return [c[0].text for c in model.caption_images(x, [model.request()] * len(blobs))]


# --- the whole run ----------------------------------------------------------------------------


def run(cfg: BenchConfig) -> dict[str, Any]:
    paths = find_images(cfg.images)
    blobs = [p.read_bytes() for p in paths[: cfg.offline_images]]
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    }
    results["machine"] = benchdoc.machine()
    results["images"] = {
        "folder": str(paths[0].parent),
        "available": len(paths),
        "used": len(blobs),
    }
    from service.manifest import load_manifest

    manifest = load_manifest(cfg.bundle_dir)
    results["bundle"] = {
        "dir": str(cfg.bundle_dir),
        "name": manifest.name,
        "version": manifest.version,
        "encoder": manifest.encoder.name,
        "decoder": manifest.decoder.architecture,
        "int8": manifest.encoder.int8_file,
    }

    peak_before = flops.measure_peak_gflops(1024 if cfg.quick else 2048, repeats=10)
    print("(a) offline pipeline, fp32", flush=True)
    results["offline"] = offline_phase(cfg, blobs, use_int8=False)
    ceiling = results["offline"]["best"]["throughput"]
    if manifest.encoder.int8_file:
        print("(e) offline pipeline, int8 encoder", flush=True)
        results["offline_int8"] = offline_phase(cfg, blobs, use_int8=True)
    print("(f) roofline", flush=True)
    results["roofline"] = roofline_phase(cfg, results["offline"], peak_before)
    gc.collect()

    pool = PayloadPool.from_images(paths[: len(blobs)], "upload")
    print("(b) service with batching", flush=True)
    rerun = offline_rerun(cfg, blobs, results["offline"]["best"]) if cfg.paired_rounds else None
    results["service"] = service_phase(cfg, pool, ceiling, batching=True, offline=rerun)
    del rerun
    print("(c) service with CAPTION_MAX_BATCH_SIZE=1", flush=True)
    results["service_batch1"] = service_phase(cfg, pool, ceiling, batching=False)

    print("(d) naive baseline", flush=True)
    baseline = load_baseline(cfg.bundle_dir)
    naive = measure(baseline, blobs[: cfg.naive_images])
    results["naive"] = naive.to_dict()
    results["naive"]["service_captions"] = _greedy_captions(cfg, blobs[: cfg.naive_images])
    results["naive"]["captions_match"] = sum(
        a == b for a, b in zip(naive.captions, results["naive"]["service_captions"], strict=True)
    )
    print(f"  {naive.label}: {naive.throughput:.3f} img/s", flush=True)
    results["ratios"] = benchdoc.ratios(results)
    return results


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


AUTOGROUP = Path("/proc/self/autogroup")


def _autogroup_nice() -> int | None:
    try:
        return int(AUTOGROUP.read_text().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def _set_priority(nice: int) -> dict[str, Any]:
    """Process nice (inherited by the service) and, where the kernel groups processes by
    session (``sched_autogroup``: nice then only ranks processes *within* a session), the
    session's autogroup nice too, which is what ranks it against other sessions."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    group_before = _autogroup_nice()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        if group_before is not None:
            AUTOGROUP.write_text(f"{nice}\n")
    except OSError as exc:
        print(f"could not set priority {nice} ({exc}); running at {before}", flush=True)
    return {
        "asked": nice,
        "got": os.getpriority(os.PRIO_PROCESS, 0),
        "autogroup": _autogroup_nice(),
        "before": before,
        "autogroup_before": group_before,
    }


def _restore_priority(priority: dict[str, Any]) -> None:
    if priority["autogroup_before"] is not None and priority["autogroup"] is not None:
        with contextlib.suppress(OSError):
            AUTOGROUP.write_text(f"{priority['autogroup_before']}\n")


def main(args: argparse.Namespace) -> int:
    cfg = BenchConfig.from_args(args)
    # SIGTERM unwinds like Ctrl-C, so the service subprocess is stopped on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    priority = _set_priority(cfg.nice)
    started = time.time()
    meter = CpuMeter().start()
    try:
        results = run(cfg)
    finally:
        _restore_priority(priority)  # the session's other processes go back to normal
    results["wall_s"] = time.time() - started
    results["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["cpu"] = meter.read()
    results["priority"] = priority
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(cfg.out_dir / "benchmarks.json", results)
    plot_steps(
        {
            "batching": results["service"]["capacity"]["steps"],
            "max_batch_size=1": results["service_batch1"]["capacity"]["steps"],
        },
        cfg.out_dir / "benchmarks.png",
        title="captioner service: open-loop ramp (Poisson arrivals)",
    )
    doc = benchdoc.write(cfg.out_dir / "benchmarks.md", results, quick=cfg.quick)
    print(benchdoc.ratio_lines(results["ratios"]))
    print(f"wrote {doc}")
    return 0
