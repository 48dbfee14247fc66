"""The bundle writer on small stand-in Keras models and real Flickr8k images."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.bundle import (
    KERAS_WEIGHTS_FILE,
    BundleExistsError,
    ExportOptions,
    ExportSources,
    record_metrics,
    write_bundle,
)
from export.images import load_batch, train_head
from export.parity import DecoderShape, ParityError, check_parity
from service.manifest import (
    BundleError,
    Manifest,
    Preprocessing,
    load_manifest,
    verify_files,
)
from service.model import CaptionModel
from service.vocabulary import SPECIALS, Vocabulary

from .standins import tiny_encoder, tiny_step_model

pytestmark = pytest.mark.train

WORDS = "a dog cat man runs jumps on the grass in water red ball black white".split()
SIZE = 64


@pytest.fixture(scope="session")
def standin_sources(tmp_path_factory: pytest.TempPathFactory) -> ExportSources:
    vocab = Vocabulary(tokens=SPECIALS + tuple(WORDS))
    step = tiny_step_model(len(vocab), units=16, feature_dim=16)
    weights = tmp_path_factory.mktemp("weights") / "step.weights.h5"
    step.save_weights(weights)
    return ExportSources(
        encoder=tiny_encoder(SIZE, feature_dim=16),
        encoder_name="tiny_conv",
        encoder_weights="random (seed 0)",
        preprocessing=Preprocessing(height=SIZE, width=SIZE, mean=(127.5,) * 3, std=(127.5,) * 3),
        feature_dim=16,
        step_model=step,
        vocab=vocab,
        hidden_size=16,
        max_length=12,
        training={"config": {"units": 16}},
        keras_weights=weights,
    )


@pytest.fixture(scope="session")
def options(flickr8k_dir: Path) -> ExportOptions:
    return ExportOptions(name="standin", version="0.0.1", data_dir=flickr8k_dir)


@pytest.fixture(scope="session")
def standin_bundle(
    standin_sources: ExportSources, options: ExportOptions, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "standin"
    quantized = replace(options, quantize=True, calibration_images=16, agreement_images=8)
    return write_bundle(standin_sources, out, quantized)


def test_bundle_validates_and_every_file_is_hashed(standin_bundle: Path) -> None:
    manifest = load_manifest(standin_bundle)
    verify_files(standin_bundle, manifest)
    on_disk = {p.name for p in standin_bundle.iterdir()} - {"manifest.json"}
    assert set(manifest.files) == on_disk
    assert on_disk == {
        "encoder.onnx",
        "encoder.int8.onnx",
        "decoder.onnx",
        "vocab.json",
        KERAS_WEIGHTS_FILE,
    }
    assert manifest.training["keras_weights_file"] == KERAS_WEIGHTS_FILE
    assert manifest.training["export"]["opset"] == 17
    assert {"keras", "tf2onnx", "onnx"} <= set(manifest.training["export"])
    assert manifest.decoder.architecture == "merge_lstm"
    assert [(s.input, s.output, s.size) for s in manifest.decoder.states] == [
        ("h", "h_out", 16),
        ("c", "c_out", 16),
    ]
    assert Vocabulary.load(standin_bundle / "vocab.json").tokens[4:] == tuple(WORDS)


def test_onnx_files_carry_the_contract_names(standin_bundle: Path) -> None:
    enc = ort.InferenceSession(str(standin_bundle / "encoder.onnx"))
    [image] = enc.get_inputs()
    assert (image.name, image.shape) == ("image", ["batch", SIZE, SIZE, 3])
    assert [(o.name, o.shape) for o in enc.get_outputs()] == [("features", ["batch", 16])]
    dec = ort.InferenceSession(str(standin_bundle / "decoder.onnx"))
    inputs = {i.name: (i.type, i.shape) for i in dec.get_inputs()}
    assert inputs == {
        "token": ("tensor(int32)", ["batch"]),
        "h": ("tensor(float)", ["batch", 16]),
        "c": ("tensor(float)", ["batch", 16]),
        "image_features": ("tensor(float)", ["batch", 16]),
    }
    assert sorted(o.name for o in dec.get_outputs()) == ["c_out", "h_out", "logprobs"]


def test_parity_is_recorded_within_tolerance(standin_bundle: Path) -> None:
    parity = load_manifest(standin_bundle).parity
    assert parity is not None
    assert parity.batch_sizes == [1, 8] and parity.images == 8
    assert parity.feature_max_abs_diff <= parity.feature_tolerance == 1e-4
    assert parity.logprob_max_abs_diff <= parity.logprob_tolerance == 1e-4
    assert parity.greedy_captions_identical


def test_int8_encoder_is_recorded_and_served(standin_bundle: Path, flickr8k_dir: Path) -> None:
    manifest = load_manifest(standin_bundle)
    assert manifest.encoder.int8_file == "encoder.int8.onnx"
    report = manifest.quantization
    assert report is not None
    assert report["calibration_images"] == 16
    assert report["agreement"]["images"] == 8
    assert 0.0 <= report["agreement"]["greedy_captions_identical_fraction"] <= 1.0
    assert report["agreement"]["feature_cosine_mean"] > 0.95
    assert report["speed"]["fp32_ms_median"] > 0 and report["speed"]["int8_ms_median"] > 0
    model = CaptionModel.load(standin_bundle, use_int8=True, intra_op_threads=1)
    images = load_batch(train_head(flickr8k_dir, 2), manifest.encoder.preprocessing)
    assert len(model.caption_images(images, [model.request()] * 2)) == 2


def test_manifest_round_trips(standin_bundle: Path) -> None:
    manifest = load_manifest(standin_bundle)
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest


def test_tampered_file_fails_verification(standin_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(standin_bundle, tmp_path / "copy"))
    data = bytearray((copy / "decoder.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="decoder.onnx: sha256"):
        verify_files(copy, load_manifest(copy))
    with pytest.raises(BundleError):
        CaptionModel.load(copy)


def test_metrics_are_recorded_without_touching_files(standin_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(standin_bundle, tmp_path / "copy"))
    updated = record_metrics(copy, {"test": {"metrics": {"bleu_4": 0.2}}})
    assert load_manifest(copy).metrics == {"test": {"metrics": {"bleu_4": 0.2}}} == updated.metrics
    verify_files(copy, updated)


def test_existing_bundle_is_replaced_only_with_force(
    standin_sources: ExportSources, options: ExportOptions, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    write_bundle(standin_sources, out, options)
    first = load_manifest(out).created
    with pytest.raises(BundleExistsError):
        write_bundle(standin_sources, out, options)
    write_bundle(standin_sources, out, replace(options, force=True, version="0.0.2"))
    manifest = load_manifest(out)
    assert manifest.version == "0.0.2" and manifest.created > first
    verify_files(out, manifest)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging leftovers


def test_failed_parity_writes_nothing(
    standin_sources: ExportSources, options: ExportOptions, tmp_path: Path
) -> None:
    with pytest.raises(ParityError, match="encoder features differ") as caught:
        write_bundle(standin_sources, tmp_path / "bundle", replace(options, feature_tolerance=-1))
    assert caught.value.report.feature_max_abs_diff >= 0
    assert list(tmp_path.iterdir()) == []


def test_parity_catches_a_decoder_that_is_not_the_exported_one(
    standin_bundle: Path, standin_sources: ExportSources, flickr8k_dir: Path
) -> None:
    other = tiny_step_model(len(standin_sources.vocab), units=16, feature_dim=16, seed=1)
    images = load_batch(train_head(flickr8k_dir, 8), standin_sources.preprocessing)
    with pytest.raises(ParityError, match="decoder logprobs differ") as caught:
        check_parity(
            encoder=standin_sources.encoder,
            step_model=other,
            encoder_path=standin_bundle / "encoder.onnx",
            decoder_path=standin_bundle / "decoder.onnx",
            encoder_outputs={"pooled": "features"},
            images=images,
            shape=DecoderShape(hidden_size=16, max_length=12, start_id=1, end_id=2),
        )
    assert caught.value.report.logprob_max_abs_diff > 1e-3
    assert np.isfinite(caught.value.report.feature_max_abs_diff)
