"""``make bench``: one command, one run, one bundle and one image set, measured side by side.

    (a) offline in-process pipeline at its best batch size and layout: the ceiling
        (``loadtest.ceiling``);
    (b) the service over HTTP (``python -m service`` subprocess) with batching: max sustained
        throughput (``loadtest.ramp``), p50/p99 at 50/80/100% of it, 2x overload
        (``loadtest.overload``); the 100% step runs in turns with (a) at its best configuration,
        and b/a is the ratio of their medians (``loadtest.service_run``);
    (c) the same service with ``CAPTION_MAX_BATCH_SIZE=1``;
    (d) the naive baseline, ``python -m training.baseline`` in a subprocess (``loadtest.naive``);
    (e) int8 encoder against fp32, when the bundle has one;
    (f) roofline: encoder FLOPs per image x encoder throughput / measured float32 peak;
    (g) bulk captioning, ``captioner caption`` in process against (a), ``--endpoint`` against
        (b), a rerun over its own output, and on Ray Data (``loadtest.bulk``).

Results go to ``<out-dir>/benchmarks.json`` (``loadtest.results``), ``.md``
(``loadtest.benchdoc``) and ``.png``; ``--quick`` runs every phase briefly (a smoke test, not a
measurement).
"""

from __future__ import annotations

import argparse
import gc
import signal
import time
from datetime import UTC, datetime

from loadtest import benchdoc, bulkdoc, flops, host, results
from loadtest.benchconfig import BenchConfig, add_arguments
from loadtest.bulk import bulk_phase
from loadtest.ceiling import offline_phase, offline_rerun
from loadtest.naive import naive_phase
from loadtest.payloads import PayloadPool, find_images
from loadtest.profiling import CpuMeter
from loadtest.ratios import ratios
from loadtest.report import plot_steps
from loadtest.roofline import peak_size, roofline_phase
from loadtest.service_run import service_phase

__all__ = ["BenchConfig", "add_arguments", "main", "run"]


def run(cfg: BenchConfig, priority: host.Priority) -> results.BenchResults:
    from service.manifest import load_manifest

    started = time.time()
    meter = CpuMeter().start()
    machine = host.machine()
    paths = find_images(cfg.images)
    used = paths[: cfg.offline_images]
    blobs = [p.read_bytes() for p in used]
    manifest = load_manifest(cfg.bundle_dir)

    peak_before = flops.measure_peak_gflops(peak_size(cfg.quick), repeats=10)
    print("(a) offline pipeline, fp32", flush=True)
    offline = offline_phase(cfg, blobs, use_int8=False)
    offline_int8 = None
    if manifest.encoder.int8_file:
        print("(e) offline pipeline, int8 encoder", flush=True)
        offline_int8 = offline_phase(cfg, blobs, use_int8=True)
    print("(f) roofline", flush=True)
    roofline = roofline_phase(cfg, offline, peak_before)
    gc.collect()

    pool = PayloadPool.from_images(used, "upload")
    print("(b) service with batching", flush=True)
    rerun = offline_rerun(cfg.bundle_dir, blobs, offline.best) if cfg.paired_rounds else None
    service = service_phase(cfg, pool, offline.best.throughput, batching=True, offline=rerun)
    del rerun
    print("(c) service with CAPTION_MAX_BATCH_SIZE=1", flush=True)
    service_batch1 = service_phase(cfg, pool, offline.best.throughput, batching=False)

    print("(d) naive baseline", flush=True)
    naive = naive_phase(cfg.bundle_dir, used[: cfg.naive_images])
    if naive.skipped is None:
        print(f"  {naive.label}: {naive.throughput:.3f} img/s", flush=True)
    else:
        print(f"  skipped: {naive.skipped}", flush=True)
    bulk = None
    if cfg.bulk:
        print("(g) bulk captioning", flush=True)
        bulk = bulk_phase(cfg, paths, offline.best)
    return results.BenchResults(
        config=cfg,
        machine=machine,
        images=results.ImagesUsed(str(paths[0].parent), len(paths), len(blobs)),
        bundle=results.BundleInfo(
            dir=str(cfg.bundle_dir),
            name=manifest.name,
            version=manifest.version,
            encoder=manifest.encoder.name,
            decoder=manifest.decoder.architecture,
            int8=manifest.encoder.int8_file,
        ),
        offline=offline,
        offline_int8=offline_int8,
        roofline=roofline,
        service=service,
        service_batch1=service_batch1,
        naive=naive,
        ratios=ratios(
            offline=offline,
            offline_int8=offline_int8,
            roofline=roofline,
            service=service,
            service_batch1=service_batch1,
            naive=naive,
            bulk=bulk,
        ),
        wall_s=time.time() - started,
        finished_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        cpu=meter.read(),
        priority=priority,
        bulk=bulk,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(args: argparse.Namespace) -> int:
    cfg = BenchConfig.from_args(args)
    # SIGTERM unwinds like Ctrl-C, so the service subprocess is stopped on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    priority = host.set_priority(cfg.nice)
    try:
        res = run(cfg, priority)
    finally:
        host.restore_priority(priority)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    results.save(cfg.out_dir / "benchmarks.json", res)
    plot_steps(
        {
            "batching": res.service.capacity.steps,
            "max_batch_size=1": res.service_batch1.capacity.steps,
        },
        cfg.out_dir / "benchmarks.png",
        title="captioner service: open-loop ramp (Poisson arrivals)",
    )
    doc = benchdoc.write(cfg.out_dir / "benchmarks.md", res)
    print(benchdoc.ratio_lines(res.ratios))
    if res.ratios.bulk is not None:
        print(bulkdoc.ratio_lines(res.ratios.bulk))
    print(f"wrote {doc}")
    return 0
