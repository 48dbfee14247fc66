"""CaptionModel over the tiny real bundle: real ONNX Runtime sessions, real shared images."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from service.decoding import DecodeRequest
from service.manifest import BundleError, file_entry, load_manifest, write_manifest
from service.model import (
    CaptionModel,
    ProviderUnavailable,
    available_cores,
    session_options,
)
from service.vocabulary import SPECIALS


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> CaptionModel:
    return CaptionModel.load(tiny_bundle)


@pytest.fixture(scope="module")
def images(model: CaptionModel, flickr8k_dir: Path) -> NDArray[np.float32]:
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:12]
    return np.stack([model.preprocess((flickr8k_dir / "images" / n).read_bytes()) for n in names])


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def test_loads_on_cpu_and_reports_the_real_provider(model: CaptionModel) -> None:
    assert model.provider == "CPUExecutionProvider"
    assert model.input_shape == (32, 32, 3)
    assert len(model.vocab) == model.manifest.decoder.vocab_size
    assert model.max_steps == 11


def test_encode_gives_pooled_features_per_image(
    model: CaptionModel, images: NDArray[np.float32]
) -> None:
    features = model.encode(images)
    assert set(features) == {"pooled"}
    assert features["pooled"].shape == (len(images), 16)
    assert features["pooled"].dtype == np.float32
    one = model.encode(images[3:4])["pooled"]
    np.testing.assert_allclose(one[0], features["pooled"][3], atol=1e-5)


def test_encode_refuses_a_wrong_shape(model: CaptionModel) -> None:
    with pytest.raises(ValueError, match="expected images"):
        model.encode(np.zeros((2, 64, 64, 3), np.float32))


def test_captions_are_real_words_and_differ_between_images(
    model: CaptionModel, images: NDArray[np.float32]
) -> None:
    captions = model.caption_images(images, [model.request()] * len(images))
    texts = [c.text for [c] in captions]
    words = set(model.vocab.tokens) - set(SPECIALS)
    assert all(text and set(text.split()) <= words for text in texts)
    assert len(set(texts)) >= len(texts) // 2
    assert all(c.attention is None and c.score <= 0 for [c] in captions)
    assert all(len(c.tokens) <= model.max_steps for [c] in captions)


def test_batched_captions_equal_one_image_at_a_time(
    model: CaptionModel, images: NDArray[np.float32]
) -> None:
    requests = [model.request(beam_size=1 + i % 3) for i in range(len(images))]
    together = model.caption_images(images, requests)
    for i, request in enumerate(requests):
        [alone] = model.caption_images(images[i : i + 1], [request])
        assert [c.text for c in alone] == [c.text for c in together[i]]


def test_beam_search_returns_n_best_sorted(
    model: CaptionModel, images: NDArray[np.float32]
) -> None:
    requests = [model.request(beam_size=4, num_captions=3)] * 4
    for captions in model.caption_images(images[:4], requests):
        assert len(captions) == 3
        assert [c.score for c in captions] == sorted((c.score for c in captions), reverse=True)
        assert len({c.tokens for c in captions}) == 3


def test_requests_longer_than_the_model_allows_are_refused(
    model: CaptionModel, images: NDArray[np.float32]
) -> None:
    with pytest.raises(ValueError, match=f"at most {model.max_steps}"):
        model.caption_images(images[:4], [DecodeRequest(max_length=500)] * 4)
    captions = model.caption_images(images[:4], [DecodeRequest(max_length=model.max_steps)] * 4)
    assert all(len(c.tokens) <= model.max_steps for [c] in captions)


def test_concurrent_callers_get_the_same_captions(
    model: CaptionModel, images: NDArray[np.float32]
) -> None:
    def run(i: int) -> list[str]:
        batch = images[i % 3 :: 3]
        return [c.text for [c] in model.caption_images(batch, [model.request()] * len(batch))]

    expected = [run(i) for i in range(6)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        assert list(pool.map(run, range(6))) == expected


def test_warm_up_runs_each_batch_size(model: CaptionModel) -> None:
    model.warm_up([1, 3])
    model.warm_up([2], beam_size=4)


def test_session_threads_default_to_the_cores() -> None:
    assert session_options(0, 1).intra_op_num_threads == available_cores()
    assert session_options(1, 1).intra_op_num_threads == 1
    assert session_options(0, 1).get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_cuda_is_refused_clearly_when_absent(tiny_bundle: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert CaptionModel.load(tiny_bundle, provider="cuda").provider == "CUDAExecutionProvider"
    else:
        with pytest.raises(ProviderUnavailable, match="cuda"):
            CaptionModel.load(tiny_bundle, provider="cuda")


def test_a_tampered_file_is_refused(bundle_copy: Path) -> None:
    data = bytearray((bundle_copy / "decoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bundle_copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="decoder.onnx: sha256"):
        CaptionModel.load(bundle_copy)


def test_verify_false_skips_the_hash_check(bundle_copy: Path) -> None:
    with (bundle_copy / "vocab.json").open("a") as handle:
        handle.write("\n")
    with pytest.raises(BundleError, match="vocab.json: size"):
        CaptionModel.load(bundle_copy)
    assert CaptionModel.load(bundle_copy, verify=False).provider == "CPUExecutionProvider"


def test_a_missing_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match="bundle file missing"):
        CaptionModel.load(bundle_copy)


@pytest.mark.parametrize("text", ["{not json", '{"name": "x"}', ""])
def test_a_bad_manifest_is_refused(bundle_copy: Path, text: str) -> None:
    (bundle_copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match="invalid manifest"):
        CaptionModel.load(bundle_copy)


def test_a_bundle_without_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        CaptionModel.load(bundle_copy)


def test_names_that_do_not_match_the_graphs_are_refused(bundle_copy: Path) -> None:
    manifest = load_manifest(bundle_copy)
    decoder = manifest.decoder.model_copy(update={"token_input": "word"})
    write_manifest(bundle_copy, manifest.model_copy(update={"decoder": decoder}))
    with pytest.raises(BundleError, match=r"decoder.onnx does not match the manifest.*'word'"):
        CaptionModel.load(bundle_copy)


def test_a_vocabulary_of_the_wrong_size_is_refused(bundle_copy: Path) -> None:
    vocab = json.loads((bundle_copy / "vocab.json").read_text())
    vocab["tokens"].append("extra")
    (bundle_copy / "vocab.json").write_text(json.dumps(vocab))
    manifest = load_manifest(bundle_copy)
    files = {**manifest.files, "vocab.json": file_entry(bundle_copy / "vocab.json")}
    write_manifest(bundle_copy, manifest.model_copy(update={"files": files}))
    with pytest.raises(BundleError, match="vocab.json has 25 tokens, decoder expects 24"):
        CaptionModel.load(bundle_copy)


def test_a_broken_onnx_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "encoder.onnx").write_bytes(b"not an onnx model")
    manifest = load_manifest(bundle_copy)
    files = {**manifest.files, "encoder.onnx": file_entry(bundle_copy / "encoder.onnx")}
    write_manifest(bundle_copy, manifest.model_copy(update={"files": files}))
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        CaptionModel.load(bundle_copy)


def test_int8_requested_without_an_int8_encoder_is_refused(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="no int8 encoder"):
        CaptionModel.load(tiny_bundle, use_int8=True)


def test_an_attention_decoder_returns_attention_per_word(
    tiny_attention_bundle: Path, flickr8k_dir: Path
) -> None:
    model = CaptionModel.load(tiny_attention_bundle)
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:6]
    images = np.stack([model.preprocess((flickr8k_dir / "images" / n).read_bytes()) for n in names])
    features = model.encode(images)
    assert features["grid"].shape == (6, 16, 16)
    assert features["pooled"].shape == (6, 16)
    requests = [model.request(), model.request(beam_size=3, num_captions=2)] * 3
    for captions in model.caption(features, requests):
        for caption in captions:
            assert caption.text
            assert caption.attention is not None
            weights = np.asarray(caption.attention)
            assert weights.shape == (len(caption.tokens), 16)
            np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
