"""The ensemble step decoder: probability averaging, state layout, export and serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export.bundle import ExportOptions, ExportSources, write_bundle
from service.manifest import Preprocessing, load_manifest
from service.model import CaptionModel
from service.vocabulary import SPECIALS, Vocabulary
from training.ensemble import build_ensemble_step_model

from .standins import tiny_encoder, tiny_step_model

pytestmark = pytest.mark.train

WORDS = "a dog cat man runs jumps on the grass in water red ball black white".split()
VOCAB = Vocabulary(tokens=SPECIALS + tuple(WORDS))
SIZE = 64


@pytest.fixture(scope="module")
def members() -> list[Any]:
    return [
        tiny_step_model(len(VOCAB), units=16, feature_dim=16, seed=1),
        tiny_step_model(len(VOCAB), units=8, feature_dim=16, seed=2),
    ]


def test_ensemble_averages_member_probabilities_and_concatenates_states(members: list[Any]) -> None:
    ensemble = build_ensemble_step_model(members)
    rng = np.random.default_rng(0)
    batch = 3
    token = np.array([1, 5, 7], dtype=np.int32)
    h = rng.normal(size=(batch, 24)).astype(np.float32)
    c = rng.normal(size=(batch, 24)).astype(np.float32)
    feats = rng.normal(size=(batch, 16)).astype(np.float32)

    out = ensemble({"token": token, "h": h, "c": c, "image_features": feats})
    first = members[0]({"token": token, "h": h[:, :16], "c": c[:, :16], "image_features": feats})
    second = members[1]({"token": token, "h": h[:, 16:], "c": c[:, 16:], "image_features": feats})

    probs = (np.exp(first["logprobs"]) + np.exp(second["logprobs"])) / 2
    np.testing.assert_allclose(np.exp(out["logprobs"]), probs, atol=1e-6)
    np.testing.assert_allclose(np.exp(out["logprobs"]).sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["h_out"][:, :16], first["h_out"], atol=1e-6)
    np.testing.assert_allclose(out["h_out"][:, 16:], second["h_out"], atol=1e-6)
    np.testing.assert_allclose(out["c_out"][:, 16:], second["c_out"], atol=1e-6)


def test_ensemble_needs_two_compatible_members(members: list[Any]) -> None:
    with pytest.raises(ValueError, match="at least two"):
        build_ensemble_step_model(members[:1])
    other_vocab = tiny_step_model(len(VOCAB) + 1, units=8, feature_dim=16, seed=3)
    with pytest.raises(ValueError, match="disagree"):
        build_ensemble_step_model([members[0], other_vocab])


def test_ensemble_exports_passes_parity_and_is_served(
    members: list[Any],
    flickr8k_dir: Path,
    tmp_path: Path,
) -> None:
    sources = ExportSources(
        encoder=tiny_encoder(SIZE, feature_dim=16),
        encoder_name="tiny_conv",
        encoder_weights="random (seed 0)",
        preprocessing=Preprocessing(height=SIZE, width=SIZE, mean=(127.5,) * 3, std=(127.5,) * 3),
        feature_dim=16,
        step_model=build_ensemble_step_model(members),
        vocab=VOCAB,
        hidden_size=24,
        max_length=12,
        architecture="merge_lstm_ensemble",
    )
    options = ExportOptions(name="ensemble", version="0.0.1", data_dir=flickr8k_dir)
    bundle = write_bundle(sources, tmp_path / "ensemble", options)

    manifest = load_manifest(bundle)
    assert manifest.decoder.architecture == "merge_lstm_ensemble"
    assert [s.size for s in manifest.decoder.states] == [24, 24]
    assert manifest.parity is not None and manifest.parity.greedy_captions_identical

    model = CaptionModel.load(bundle)
    data = sorted((flickr8k_dir / "images").glob("*.jpg"))[0].read_bytes()
    images = np.stack([model.preprocess(data)])
    (best, *_), *_ = model.caption_images(images, [model.request(beam_size=3)])
    assert set(best.text.split()) <= set(WORDS)
