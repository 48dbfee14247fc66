"""``python -m loadtest bulk``: bench phase (g) alone, with its own references.

    python -m loadtest bulk [--quick] [--images N] [--no-ray] [--out-dir runs/bulk]

A short sweep of the offline pipeline (``loadtest.ceiling``) finds (a)'s best configuration;
then ``loadtest.bulk`` runs as in ``make bench``, except that the ``--endpoint`` runs are held to
the service's saturated closed loop (measured in turns with them) instead of (b)'s ramp, which
only ``make bench`` runs. Writes ``<out-dir>/bulk.json`` and ``bulk.md``.
"""

from __future__ import annotations

import argparse
import signal
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from loadtest import bulkdoc, host
from loadtest.benchconfig import BenchConfig
from loadtest.bulk import BulkResult, bulk_phase
from loadtest.ceiling import OfflineResult, offline_phase
from loadtest.payloads import find_images
from loadtest.ratios import BulkRatios, bulk_ratios
from loadtest.report import write_json


@dataclass(frozen=True)
class BulkReport:
    config: BenchConfig
    machine: host.Machine
    priority: host.Priority
    images_folder: str
    offline: OfflineResult
    """The sweep that chose the offline runs' configuration."""
    bulk: BulkResult
    ratios: BulkRatios
    wall_s: float
    finished_utc: str


def run(cfg: BenchConfig, priority: host.Priority) -> BulkReport:
    started = time.time()
    machine = host.machine()
    paths = find_images(cfg.images)
    blobs = [p.read_bytes() for p in paths[: cfg.offline_images]]
    print("(a) offline pipeline: a short sweep for its best configuration", flush=True)
    offline = offline_phase(cfg, blobs, use_int8=False)
    print("(g) bulk captioning", flush=True)
    bulk = bulk_phase(cfg, paths, offline.best)
    return BulkReport(
        config=cfg,
        machine=machine,
        priority=priority,
        images_folder=str(paths[0].parent),
        offline=offline,
        bulk=bulk,
        ratios=bulk_ratios(bulk, None),
        wall_s=time.time() - started,
        finished_utc=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def report_lines(report: BulkReport) -> list[str]:
    m, cfg = report.machine, report.config
    when = datetime.fromisoformat(report.finished_utc)
    quick = ["**QUICK MODE: a smoke run; these are not measurements.**", ""] if cfg.quick else []
    return [
        "# Bulk captioning benchmark",
        "",
        *quick,
        f"- Date: {when:%Y-%m-%d %H:%M} UTC; whole run {report.wall_s:.0f} s; command: "
        f"`python -m loadtest bulk --images {cfg.bulk_images}`.",
        f"- Machine: {m.model_name or '?'}, {m.cores_usable} usable CPUs; load average at start "
        f"{', '.join(f'{x:.1f}' for x in m.load_average_at_start)}; nice {report.priority.got}.",
        f"- Bundle: `{cfg.bundle_dir}`; images: {report.images_folder}.",
        "",
        *bulkdoc.lines(report.bulk, report.ratios),
    ]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(args: argparse.Namespace) -> int:
    cfg = BenchConfig.for_bulk(args)
    signal.signal(signal.SIGTERM, _interrupt)  # unwinds: the service subprocess is stopped
    priority = host.set_priority(cfg.nice)
    try:
        report = run(cfg, priority)
    finally:
        host.restore_priority(priority)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(cfg.out_dir / "bulk.json", asdict(report))
    doc = cfg.out_dir / "bulk.md"
    doc.write_text("\n".join(report_lines(report)) + "\n")
    print(bulkdoc.ratio_lines(report.ratios))
    print(f"wrote {doc}")
    return 0
