"""``python -m loadtest bench --quick`` end to end on the tiny bundle: every phase runs and the
report carries every section (a smoke test: quick-mode figures are not measurements)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import benchdoc
from loadtest.results import load

pytestmark = pytest.mark.e2e


def test_quick_bench_writes_the_report(
    tiny_bundle: Path, flickr8k_dir: Path, tmp_path: Path
) -> None:
    cmd = [
        sys.executable, "-m", "loadtest", "bench", "--quick", "--bundle", str(tiny_bundle),
        "--images", str(flickr8k_dir), "--out-dir", str(tmp_path), "--no-profile", "--nice", "0",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for ratio in ("b/a", "b/c", "b/d", "f "):
        assert ratio in done.stdout
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    r = results["ratios"]
    assert r["a"] > 0 and r["b"] and r["c"] and r["d"] > 0
    assert r["b_over_a"] == pytest.approx(r["b"] / r["a"])
    assert 0 < r["f_encoder_fraction_of_peak"]
    assert "p99_at_80_over_idle_floor" in r and "finished_utc" in results
    offline = results["offline"]  # the ceiling: one pipeline, or 2 single-threaded side by side
    assert [row["workers"] for row in offline["parallel_rows"]] == [2, 2]
    candidates = [row["throughput"] for row in offline["rows"] + offline["parallel_rows"]]
    assert r["a_sweep"] == pytest.approx(max(candidates))
    # b/a from the paired runs: the offline pipeline, at that best configuration, in turns with
    # the service at its max sustained rate (one turn in quick mode)
    paired = results["service"]["paired"]
    assert [r["a"], r["b"]] == [paired["offline_median"], paired["service_median"]]
    assert len(paired["rounds"]) == 1 and paired["rounds"][0]["offline"] > 0
    assert paired["rate"] == pytest.approx(results["service"]["levels"]["1"]["offered_rate"])
    assert set(results["service"]["levels"]) == {"0.5", "0.8", "1", "2"}
    assert results["naive"]["label"].startswith("ONNX fallback")  # the tiny bundle has no Keras
    assert results["service"]["overload"]["rejected_503_share"] >= 0
    assert r["bulk"]["g_cli_over_a"] > 0 and results["bulk"]["images"] == 20  # (g), quick
    assert "(b) max sustained" in r["bulk"]["service_reference_source"]
    doc = (tmp_path / "benchmarks.md").read_text()
    for heading in ("## Summary", "## Ratios and targets", "## Roofline (f)", "### batching (b)",
                    "### Paired runs", "QUICK MODE", "benchmarks.png",
                    "## Bulk captioning (g)"):  # fmt: skip
        assert heading in doc
    assert (tmp_path / "benchmarks.png").read_bytes()[:4] == b"\x89PNG"
    # benchmarks.json reads back into the dataclasses the report was written from
    back = load(tmp_path / "benchmarks.json")
    assert back.naive.captions_match == 1 and back.service.overload.deadline_ms == 10_000
    assert "\n".join(benchdoc.lines(back)) + "\n" == doc
