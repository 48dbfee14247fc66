"""The naive Keras baseline (bench phase d, ``training.baseline``) on an attention bundle (a
tiny real run, exported): it rebuilds the Lite0 grid encoder and the teacher-forced attention
decoder from the bundle's Keras weights (else the run's), and its prefix-re-run greedy captions
equal the ONNX service model's greedy captions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadtest.ceiling import greedy_captions
from loadtest.payloads import find_images
from tests.training import test_attention
from training.baseline import KerasNaiveBaseline, OnnxPrefixBaseline, load_baseline, measure

# the tiny real attention run and its bundle, as tests/training/test_attention.py builds them
attention_run = test_attention.attention_run
attention_bundle = test_attention.attention_bundle

pytestmark = pytest.mark.train


def test_keras_baseline_of_an_attention_bundle_says_what_the_service_says(
    attention_bundle: Path, flickr8k_dir: Path
) -> None:
    blobs = [p.read_bytes() for p in find_images(flickr8k_dir, limit=2)]
    baseline = load_baseline(attention_bundle)
    assert isinstance(baseline, KerasNaiveBaseline)
    assert baseline.role == "grid" and baseline.label.endswith("(weights from the bundle)")
    result = measure(baseline, blobs, warmup=0)
    assert result.captions == greedy_captions(attention_bundle, blobs)
    assert all(t > 0 for t in result.seconds_per_image)


def test_without_bundled_weights_the_run_then_onnx_is_used(
    attention_bundle: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(attention_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    name = manifest["training"].pop("keras_weights_file")
    del manifest["files"][name]
    (bundle / name).unlink()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    run_dir = manifest["training"]["config"]["run_dir"]
    baseline = load_baseline(bundle)
    assert isinstance(baseline, KerasNaiveBaseline)
    assert baseline.label.endswith(f"(weights from the training run {run_dir})")

    manifest["training"]["config"]["run_dir"] = str(tmp_path / "gone")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    fallback = load_baseline(bundle)
    assert isinstance(fallback, OnnxPrefixBaseline)
    assert fallback.label.startswith("ONNX fallback")
