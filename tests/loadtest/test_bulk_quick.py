"""``python -m loadtest bulk --quick`` on the tiny bundle and 20 images: every part of bench phase
(g) runs and the report carries its fields (a smoke test: quick-mode figures are not speeds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import bulkdoc
from loadtest.bulk import BulkResult
from loadtest.ratios import TARGETS, BulkRatios
from loadtest.serde import from_dict

pytestmark = pytest.mark.e2e


def test_quick_bulk_writes_the_report(
    tiny_bundle: Path, flickr8k_dir: Path, tmp_path: Path
) -> None:
    cmd = [
        sys.executable, "-m", "loadtest", "bulk", "--quick", "--images", "20",
        "--bundle", str(tiny_bundle), "--image-dir", str(flickr8k_dir),
        "--out-dir", str(tmp_path), "--nice", "0",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=420, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "bulk.json").read_text())
    bulk = from_dict(BulkResult, report["bulk"])
    ratios = from_dict(BulkRatios, report["ratios"])
    assert bulk.images == 20
    first = bulk.in_process.rounds[0]
    assert first.offline > 0 and first.cli.done == 20 and first.cli.errors == 0
    assert first.cli.wall_s > first.cli.job_s > 0
    assert bulk.rerun.rerun.skipped == 20 and bulk.rerun.rerun.done == 0
    assert bulk.rerun.share == pytest.approx(bulk.rerun.rerun.wall_s / bulk.rerun.first.wall_s)
    assert bulk.endpoint.best_concurrency == 8 and bulk.endpoint.closed_loop_median > 0
    assert bulk.endpoint.rounds[0].runs["8"].done == 20
    assert bulk.rerun.endpoint_rerun is not None and bulk.rerun.endpoint_rerun.skipped == 20
    ray = bulk.ray
    assert ray is not None and ray.rounds[0].fixed.done == 2 and ray.rounds[0].runs["8"].done == 20
    assert ray.rounds[0].runs["8"].first_output_s is not None and ray.per_batch_s is None
    for name in TARGETS:
        if name.startswith("g_"):
            assert getattr(ratios, name) is not None
    assert "closed loop" in ratios.service_reference_source  # alone: no ramp to hold it to
    doc = (tmp_path / "bulk.md").read_text()
    assert "QUICK MODE" in doc and "## Bulk captioning (g)" in doc
    assert bulkdoc.ratio_lines(ratios) in doc and bulkdoc.ratio_lines(ratios) in done.stdout
