"""``python -m training.baseline`` as the bench runs it: a subprocess whose JSON the bench reads
(``loadtest.naive``), on the tiny bundle (no Keras weights: the naive algorithm on its ONNX
graphs), and skipped without the train extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import naive
from loadtest.payloads import find_images


def test_the_module_prints_its_result_as_json(tiny_bundle: Path, flickr8k_dir: Path) -> None:
    images = [str(p) for p in find_images(flickr8k_dir, limit=2)]
    cmd = [sys.executable, "-m", "training.baseline", "--bundle", str(tiny_bundle), *images]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["label"].startswith("ONNX fallback") and result["images"] == 2
    assert len(result["captions"]) == 2 and result["throughput"] > 0


def test_the_bench_reads_the_module_result_and_skips_without_the_train_extra(
    tiny_bundle: Path, flickr8k_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = find_images(flickr8k_dir, limit=2)
    ran = naive.naive_phase(tiny_bundle, images)
    assert ran.skipped is None and ran.label.startswith("ONNX fallback")
    assert ran.captions_match == 2 and ran.captions == ran.service_captions
    monkeypatch.setattr(naive, "train_extra_installed", lambda: False)
    skipped = naive.naive_phase(tiny_bundle, images)
    assert skipped.skipped is not None and "train extra" in skipped.skipped
    assert skipped.throughput is None
