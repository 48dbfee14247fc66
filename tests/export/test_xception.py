"""Xception goes through the same export path (random weights, 96 px to stay fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.bundle import ExportOptions, ExportSources, write_bundle
from export.images import load_batch, train_head
from service.manifest import load_manifest, verify_files
from service.model import CaptionModel
from service.vocabulary import SPECIALS, Vocabulary
from training.encoders import build_encoder, encoder_info
from training.model import ModelConfig, build_step_model

pytestmark = pytest.mark.train


def test_xception_bundle_validates_and_serves(tmp_path: Path, flickr8k_dir: Path) -> None:
    info = encoder_info("xception", weights=None, input_size=96)
    vocab = Vocabulary(tokens=SPECIALS + tuple("a dog runs on the grass".split()))
    step = build_step_model(
        ModelConfig(vocab_size=len(vocab), feature_dim=info.feature_dim, units=16, embed_dim=8)
    )
    sources = ExportSources(
        encoder=build_encoder("xception", weights=None, input_size=96),
        encoder_name=info.name,
        encoder_weights=info.weights_desc,
        preprocessing=info.preprocessing,
        feature_dim=info.feature_dim,
        step_model=step,
        vocab=vocab,
        hidden_size=16,
        max_length=10,
    )
    options = ExportOptions(name="xception-test", version="0.0.1", data_dir=flickr8k_dir)
    bundle = write_bundle(sources, tmp_path / "xception", options)

    manifest = load_manifest(bundle)
    verify_files(bundle, manifest)
    assert manifest.encoder.name == "xception" and manifest.encoder.feature_dim == 2048
    pre = manifest.encoder.preprocessing
    assert (pre.height, pre.width, pre.mean, pre.std) == (96, 96, (127.5,) * 3, (127.5,) * 3)
    assert manifest.parity is not None and manifest.parity.greedy_captions_identical

    model = CaptionModel.load(bundle, intra_op_threads=2)
    images = load_batch(train_head(flickr8k_dir, 3), model.preprocessing)
    captions = model.caption_images(images, [model.request(beam_size=2)] * 3)
    assert [len(c) for c in captions] == [1, 1, 1]
    assert all(set(c[0].text.split()) <= set(vocab.tokens) for c in captions)
