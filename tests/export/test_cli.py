"""``python -m export`` on a real (tiny) training run: the issue's done-criterion, small.

One session fixture trains a 40-image, 1-epoch merge decoder on EfficientNet-Lite0 features and
exports it with ``--quantize int8`` (small calibration) through the CLI entry point.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from export.__main__ import build_parser, main
from export.bundle import KERAS_WEIGHTS_FILE
from export.images import load_batch
from export.parity import DecoderShape, KerasStep, greedy_tokens
from service.manifest import load_manifest, sha256_of, verify_files
from service.model import CaptionModel
from training.data import image_dir, load_split
from training.encoders import build_encoder
from training.model import ModelConfig, build_training_model, load_run
from training.train import TrainConfig, train

pytestmark = pytest.mark.train


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, flickr8k_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        run_dir=str(root / "run"),
        data_dir=str(flickr8k_dir),
        cache_dir=str(root / "cache"),
        limit=40,
        epochs=1,
        units=32,
        embed_dim=16,
        min_count=1,
        batch_size=64,
    )
    return train(config)


@pytest.fixture(scope="session")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory, flickr8k_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-lite0"
    argv = ["--run-dir", str(tiny_run), "--out", str(out), "--data-dir", str(flickr8k_dir)]
    argv += ["--version", "0.1.0", "--quantize", "int8"]
    argv += ["--calibration-images", "16", "--agreement-images", "8"]
    argv += ["--evaluate", "--eval-limit", "8", "--eval-out", str(out.parent / "eval")]
    assert main(argv) == 0
    return out


def test_bundle_from_a_run_validates(exported: Path, tiny_run: Path) -> None:
    manifest = load_manifest(exported)
    verify_files(exported, manifest)
    assert (manifest.name, manifest.version) == ("tiny-lite0", "0.1.0")
    assert manifest.encoder.name == "efficientnet_lite0"
    assert manifest.encoder.feature_dim == 1280
    assert manifest.encoder.preprocessing.height == 224
    assert manifest.encoder.weights.startswith("imagenet")
    assert manifest.decoder.hidden_size == 32
    assert manifest.decoder.max_length == 20
    assert manifest.training["config"]["limit"] == 40
    assert manifest.training["history"]["epochs"] == 1
    assert manifest.files[KERAS_WEIGHTS_FILE].sha256 == sha256_of(tiny_run / "best.weights.h5")
    assert manifest.quantization is not None and manifest.encoder.int8_file


def test_evaluation_metrics_are_stored_in_the_manifest(exported: Path) -> None:
    test = load_manifest(exported).metrics["test"]
    assert test["split"] == "test" and test["counts"]["images"] == 8
    assert test["settings"]["beam_size"] == 3
    for key in ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "nltk_bleu_4"):
        assert test["metrics"][key] >= 0.0
    assert (exported.parent / "eval" / "captions.jsonl").is_file()
    int8 = load_manifest(exported).metrics["test_int8"]
    assert int8["settings"]["int8"] is True and int8["counts"]["images"] == 8
    assert (exported.parent / "eval" / "int8" / "captions.jsonl").is_file()
    greedy, val = (
        load_manifest(exported).metrics["test_greedy"],
        load_manifest(exported).metrics["val"],
    )
    assert greedy["settings"]["beam_size"] == 1 and greedy["settings"]["length_penalty"] == 0.0
    assert val["split"] == "val" and val["counts"]["images"] == 8
    # the repetition and diversity figures travel with the scores
    for key in ("repeated_bigram", "dangling_end", "distinct", "mean_length", "gender_error"):
        assert key in test["habits"], key


def test_parity_holds_on_the_real_encoder(exported: Path) -> None:
    parity = load_manifest(exported).parity
    assert parity is not None and parity.greedy_captions_identical
    assert parity.feature_max_abs_diff <= parity.feature_tolerance
    assert parity.logprob_max_abs_diff <= parity.logprob_tolerance


def test_served_captions_equal_keras_captions(
    exported: Path, tiny_run: Path, flickr8k_dir: Path
) -> None:
    """Images parity never saw (test split), ONNX through the service runtime vs Keras."""
    model = CaptionModel.load(exported, intra_op_threads=2)
    names = load_split(flickr8k_dir, "test")[:8]
    images = load_batch([image_dir(flickr8k_dir) / n for n in names], model.preprocessing)
    served = [caps[0].tokens for caps in model.caption_images(images, [model.request()] * 8)]

    run = load_run(tiny_run)
    encoder = build_encoder("efficientnet_lite0")
    features = np.asarray(encoder(images, training=False)["pooled"])
    shape = DecoderShape(hidden_size=32, max_length=20, start_id=1, end_id=2)
    assert served == greedy_tokens(KerasStep(run.step_model), features, shape)


def test_bundled_keras_weights_rebuild_the_decoder(exported: Path, tiny_run: Path) -> None:
    manifest = load_manifest(exported)
    model = build_training_model(ModelConfig.from_dict(manifest.training["config"]["model"]))
    model.load_weights(exported / manifest.training["keras_weights_file"])
    reference = load_run(tiny_run).training_model
    for mine, theirs in zip(model.weights, reference.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_existing_bundle_needs_force(exported: Path, tiny_run: Path) -> None:
    before = (exported / "manifest.json").read_bytes()
    assert main(["--run-dir", str(tiny_run), "--out", str(exported)]) == 2
    assert (exported / "manifest.json").read_bytes() == before


def test_help_explains_every_flag() -> None:
    parser = build_parser()
    flags = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert {a.dest for a in flags} >= {"run_dir", "out", "quantize", "evaluate", "force"}
    assert all(a.help and len(a.help) > 10 for a in flags)
