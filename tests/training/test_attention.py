"""Attention decoder: the step model equals the teacher-forced model (LSTM and GRU, in Keras and
in ONNX), the doubly stochastic penalty is what it says, and a tiny real run on the 7x7 Lite0
grid trains, exports with parity and is served with per-word attention that sums to one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.attention import (
    AttentionConfig,
    AttentionCoverage,
    build_step_model,
    build_training_model,
    memory_dim,
    memory_models,
)
from training.model import copy_weights_to_step_model

pytestmark = pytest.mark.train

SMALL = {"vocab_size": 30, "feature_dim": 24, "grid_size": 9, "units": 16, "embed_dim": 8}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def _models(cell: str) -> tuple[AttentionConfig, Any, Any]:
    import keras

    keras.utils.set_random_seed(7)
    cfg = AttentionConfig(**SMALL, attention_dim=12, cell=cell)  # type: ignore[arg-type]
    training_model, step_model = build_training_model(cfg), build_step_model(cfg)
    copy_weights_to_step_model(training_model, step_model)
    return cfg, training_model, step_model


def _inputs(rng: np.random.Generator, batch: int = 3, steps: int = 6) -> tuple[np.ndarray, ...]:
    grid = rng.normal(size=(batch, SMALL["grid_size"], SMALL["feature_dim"])).astype(np.float32)
    tokens = rng.integers(1, SMALL["vocab_size"], size=(batch, steps)).astype(np.int32)
    return grid, tokens


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_model_reproduces_the_training_model(cell: str) -> None:
    from export.parity import KerasStep

    cfg, training_model, step_model = _models(cell)
    grid, tokens = _inputs(np.random.default_rng(0))
    logits = np.asarray(training_model({"image_features": grid, "tokens": tokens}))
    expected = _log_softmax(logits)

    step = KerasStep(step_model)
    assert step.state_names == cfg.state_names == (("h", "c") if cell == "lstm" else ("h",))
    states = [np.zeros((3, cfg.units), np.float32) for _ in cfg.state_names]
    for t in range(tokens.shape[1]):
        out = step(tokens[:, t], states, grid)
        np.testing.assert_allclose(out.logprobs, expected[:, t], atol=1e-5)
        assert out.attention is not None and out.attention.shape == (3, SMALL["grid_size"])
        np.testing.assert_allclose(out.attention.sum(axis=-1), 1.0, atol=1e-5)
        states = out.states


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_onnx_step_decoder_matches_keras(cell: str, tmp_path: Path) -> None:
    from export.onnx_export import export_step_decoder
    from export.parity import KerasStep, OnnxStep, ort_session

    cfg, _, step_model = _models(cell)
    path = export_step_decoder(
        step_model,
        tmp_path / "decoder.onnx",
        hidden_size=cfg.units,
        feature_dim=cfg.feature_dim,
        states=cfg.state_names,
        grid_size=cfg.grid_size,
        attention=True,
    )
    onnx_step, keras_step = OnnxStep(ort_session(path)), KerasStep(step_model)
    assert onnx_step.state_names == cfg.state_names and onnx_step.attention
    grid, tokens = _inputs(np.random.default_rng(1), batch=5)
    states = [np.zeros((5, cfg.units), np.float32) for _ in cfg.state_names]
    for t in range(tokens.shape[1]):
        ref, got = keras_step(tokens[:, t], states, grid), onnx_step(tokens[:, t], states, grid)
        np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-4)
        assert ref.attention is not None and got.attention is not None
        np.testing.assert_allclose(got.attention, ref.attention, atol=1e-5)
        for a, b in zip(got.states, ref.states, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        states = ref.states


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_memory_split_computes_the_same_steps(cell: str) -> None:
    """Serving split: projections once per image (memory head) + a step reading the memory."""
    from export.parity import KerasStep

    cfg, _, step_model = _models(cell)
    head, memory_step = memory_models(step_model, cfg)
    grid, tokens = _inputs(np.random.default_rng(2), batch=4)
    memory = np.asarray(head(grid))
    assert memory.shape == (4, cfg.grid_size, memory_dim(cfg)) == (4, 9, 16 + 12)

    ref_step, fast_step = KerasStep(step_model), KerasStep(memory_step)
    ref_states = fast_states = [np.zeros((4, cfg.units), np.float32) for _ in cfg.state_names]
    for t in range(tokens.shape[1]):
        ref = ref_step(tokens[:, t], ref_states, grid)
        got = fast_step(tokens[:, t], fast_states, memory)
        np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)
        assert got.attention is not None and ref.attention is not None
        np.testing.assert_allclose(got.attention, ref.attention, atol=1e-6)
        ref_states, fast_states = ref.states, got.states


def test_lstm_and_gru_ensemble_averages_probabilities_and_attention() -> None:
    """One step model over an LSTM and a GRU member: each reads its slice of the concatenated
    memory and states; probabilities and attention are the members' means; the GRU has no cell
    state, so its c slice comes back as it went in."""
    from training.ensemble import build_attention_ensemble_step_model, build_memory_ensemble_head

    cfg_l, _, step_l = _models("lstm")
    cfg_g, _, step_g = _models("gru")
    head_l, fast_l = memory_models(step_l, cfg_l)
    head_g, fast_g = memory_models(step_g, cfg_g)
    head = build_memory_ensemble_head([head_l, head_g])
    ensemble = build_attention_ensemble_step_model([fast_l, fast_g])

    grid, tokens = _inputs(np.random.default_rng(3), batch=4)
    memory = np.asarray(head(grid))
    width = memory_dim(cfg_l)
    assert memory.shape == (4, 9, width + memory_dim(cfg_g))
    np.testing.assert_allclose(memory[..., :width], np.asarray(head_l(grid)), atol=1e-6)

    u = cfg_l.units
    rng = np.random.default_rng(4)
    h = rng.normal(size=(4, 2 * u)).astype(np.float32)
    c = rng.normal(size=(4, 2 * u)).astype(np.float32)
    token = tokens[:, 0]
    out = ensemble({"token": token, "h": h, "c": c, "image_features": memory})
    lstm = fast_l(
        {"token": token, "h": h[:, :u], "c": c[:, :u], "image_features": memory[..., :width]}
    )
    gru = fast_g({"token": token, "h": h[:, u:], "image_features": memory[..., width:]})

    probs = (np.exp(lstm["logprobs"]) + np.exp(gru["logprobs"])) / 2
    np.testing.assert_allclose(np.exp(out["logprobs"]), probs, atol=1e-6)
    attention = np.asarray(out["attention"])
    np.testing.assert_allclose(attention, (lstm["attention"] + gru["attention"]) / 2, atol=1e-6)
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["h_out"][:, :u], lstm["h_out"], atol=1e-6)
    np.testing.assert_allclose(out["h_out"][:, u:], gru["h_out"], atol=1e-6)
    np.testing.assert_allclose(out["c_out"][:, :u], lstm["c_out"], atol=1e-6)
    np.testing.assert_allclose(out["c_out"][:, u:], c[:, u:])


def test_coverage_penalty_pulls_towards_an_even_share() -> None:
    layer = AttentionCoverage(weight=2.0)
    tokens = np.array([[1, 5, 6, 0], [1, 7, 0, 0]], np.int32)  # 3 and 2 real input tokens
    even = np.full((2, 4, 4), 0.25, np.float32)  # every cell gets len / N in total
    layer(even, tokens)
    assert float(np.asarray(layer.losses[-1])) == pytest.approx(0.0, abs=1e-6)

    focused = np.zeros((2, 4, 4), np.float32)
    focused[..., 0] = 1.0  # all attention on cell 0
    layer = AttentionCoverage(weight=2.0)
    layer(focused, tokens)
    # item 0: share 0.75, received (3,0,0,0) -> 2.25^2 + 3 * 0.75^2; item 1: share 0.5, (2,0,0,0)
    expected = 2.0 * ((2.25**2 + 3 * 0.75**2) + (1.5**2 + 3 * 0.5**2)) / 2
    assert float(np.asarray(layer.losses[-1])) == pytest.approx(expected, rel=1e-5)


def test_config_refuses_an_unknown_cell() -> None:
    with pytest.raises(ValueError, match="cell"):
        AttentionConfig(**SMALL, cell="rnn")  # type: ignore[arg-type]


# ------------------------------------------------------------------ a tiny real run, exported


def _tiny_attention_run(root: Path, flickr8k_dir: Path, **overrides: Any) -> Path:
    """A few epochs of the attention decoder on 40 train images (the same images, so the same
    vocabulary, whatever ``overrides`` change)."""
    from training.train import TrainConfig, train

    settings: dict[str, Any] = {
        "decoder": "attention",
        "limit": 40,
        "units": 16,
        "embed_dim": 16,
        "attention_dim": 16,
        "min_count": 2,
        "batch_size": 16,
        "lr": 3e-3,
        **overrides,
    }
    cfg = TrainConfig(
        run_dir=str(root / "run"),
        data_dir=str(flickr8k_dir),
        cache_dir=str(root / "cache"),
        **settings,
    )
    return train(cfg)


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory: pytest.TempPathFactory, flickr8k_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("attention-run")
    return _tiny_attention_run(root, flickr8k_dir, cell="lstm", coverage=0.1, epochs=3, patience=3)


@pytest.fixture(scope="module")
def attention_bundle(
    attention_run: Path, tmp_path_factory: pytest.TempPathFactory, flickr8k_dir: Path
) -> Path:
    from export.bundle import ExportOptions, write_bundle
    from export.run import sources_from_run

    out = tmp_path_factory.mktemp("models") / "tiny-attention"
    options = ExportOptions(name="tiny-attention", version="0.0.1", data_dir=flickr8k_dir)
    return write_bundle(sources_from_run(attention_run), out, options)


@pytest.fixture(scope="module")
def gru_run(tmp_path_factory: pytest.TempPathFactory, flickr8k_dir: Path) -> Path:
    """A GRU twin of ``attention_run`` on the same images (same vocabulary), another seed."""
    root = tmp_path_factory.mktemp("attention-gru-run")
    return _tiny_attention_run(
        root, flickr8k_dir, cell="gru", units=8, attention_dim=8, epochs=2, seed=7
    )


def test_tiny_run_learns_on_the_grid(attention_run: Path) -> None:
    history = json.loads((attention_run / "history.json").read_text())
    val_ce = [row["val_ce"] for row in history["epochs"]]
    assert len(val_ce) == 3 and val_ce[-1] < val_ce[0], val_ce
    config = json.loads((attention_run / "config.json").read_text())
    assert config["decoder"] == "attention"
    assert config["model"]["grid_size"] == 49 and config["model"]["feature_dim"] == 1280


def test_coverage_report_reproduces_the_runs_validation_loss(
    attention_run: Path,
    gru_run: Path,
    flickr8k_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from training.coverage import main

    runs = [attention_run, gru_run]
    argv = ["--run-dir", *map(str, runs), "--data-dir", str(flickr8k_dir)]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["run"] for row in rows] == [str(run) for run in runs]
    for run, row in zip(runs, rows, strict=True):
        history = json.loads((run / "history.json").read_text())
        # the best weights, scored on the same validation batches as in training
        assert row["val_ce"] == pytest.approx(history["best_val_ce"], abs=1e-4)
        assert 0.0 <= row["penalty"] < 49 * 20**2  # at most every word on one cell

    merge_run = tmp_path / "merge-run"
    merge_run.mkdir()
    (merge_run / "config.json").write_text(json.dumps({"decoder": "merge"}))
    assert main(["--run-dir", str(merge_run)]) == 2
    assert "not an attention run" in capsys.readouterr().err


def test_bundle_declares_the_memory_and_the_attention_output(attention_bundle: Path) -> None:
    from service.manifest import load_manifest, verify_files

    manifest = load_manifest(attention_bundle)
    verify_files(attention_bundle, manifest)
    assert manifest.encoder.outputs == {"pooled": "features", "memory": "memory"}
    assert manifest.encoder.grid_size == 49
    decoder = manifest.decoder
    assert (decoder.architecture, decoder.image_role) == ("attention_lstm", "memory")
    assert decoder.attention_output == "attention"
    assert [(s.input, s.output) for s in decoder.states] == [("h", "h_out"), ("c", "c_out")]
    parity = manifest.parity
    assert parity is not None and parity.greedy_captions_identical
    assert parity.batch_sizes == [1, 8]
    assert parity.logprob_max_abs_diff <= parity.logprob_tolerance


def test_served_captions_carry_attention_per_word(
    attention_bundle: Path, attention_run: Path, flickr8k_dir: Path
) -> None:
    from export.images import load_batch
    from export.parity import DecoderShape, KerasStep, greedy_tokens
    from service.model import CaptionModel
    from training.data import image_dir, load_split
    from training.encoders import build_encoder
    from training.model import load_run

    model = CaptionModel.load(attention_bundle, intra_op_threads=2)
    names = load_split(flickr8k_dir, "test")[:4]
    images = load_batch([image_dir(flickr8k_dir) / n for n in names], model.preprocessing)
    results = model.caption_images(images, [model.request(beam_size=3)] * 2 + [model.request()] * 2)
    for captions in results:
        best = captions[0]
        assert best.attention is not None
        weights = np.asarray(best.attention)
        assert weights.shape == (len(best.tokens), 49)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-4)

    greedy = [caps[0].tokens for caps in results[2:]]
    grid = np.asarray(build_encoder("efficientnet_lite0", outputs=("grid",))(images[2:])["grid"])
    shape = DecoderShape(hidden_size=16, max_length=20, start_id=1, end_id=2, image_role="grid")
    assert greedy == greedy_tokens(KerasStep(load_run(attention_run).step_model), grid, shape)


def test_report_draws_maps_and_pca_and_measures_cost(
    tiny_attention_bundle: Path,
    tiny_bundle: Path,
    flickr8k_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from training.attention_report import main

    common = ["--data-dir", str(flickr8k_dir)]
    argv = ["figures", "--bundle", str(tiny_attention_bundle), "--out", str(tmp_path)]
    assert main([*argv, "--images", "2", "--pca-images", "40", *common]) == 0
    for name in ("attention-maps.png", "feature-pca.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    bundles = [str(tiny_attention_bundle), str(tiny_bundle)]
    argv = ["bench", "--bundle", *bundles, "--batch-size", "4", "--rounds", "1", *common]
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out)
    assert table[0]["architecture"] != table[1]["architecture"]
    for row in table:
        assert row["beam_1"]["captions_per_s"] > 0 and row["beam_3"]["captions_per_s"] > 0

    argv = ["figures", "--bundle", str(tiny_bundle), "--out", str(tmp_path / "no"), *common]
    assert main(argv) == 2  # a merge bundle has no attention to draw


def test_lstm_and_gru_runs_export_as_one_half_size_ensemble_bundle(
    attention_run: Path, gru_run: Path, tmp_path: Path, flickr8k_dir: Path
) -> None:
    """``python -m export --run-dir A B --decoder-weights float16``: one bundle whose encoder
    emits both members' memories, whose decoder stores its weights as float16, that passes
    parity against the (rounded) Keras ensemble and is served with attention per word."""
    import onnx

    from export.__main__ import main as export_main
    from service.manifest import load_manifest, verify_files
    from service.model import CaptionModel
    from training.data import image_dir, load_split

    out = tmp_path / "ensemble"
    argv = ["--run-dir", str(attention_run), str(gru_run), "--out", str(out)]
    argv += ["--data-dir", str(flickr8k_dir), "--decoder-weights", "float16"]
    assert export_main(argv) == 0

    manifest = load_manifest(out)
    verify_files(out, manifest)
    decoder = manifest.decoder
    assert (decoder.architecture, decoder.image_role) == ("attention_ensemble", "memory")
    assert [(s.input, s.size) for s in decoder.states] == [("h", 24), ("c", 24)]
    assert manifest.encoder.outputs == {"pooled": "features", "memory": "memory"}
    assert manifest.parity is not None and manifest.parity.greedy_captions_identical
    assert [m["config"]["cell"] for m in manifest.training["members"]] == ["lstm", "gru"]
    storage = manifest.training["decoder_weights"]
    assert storage["stored_as"] == "float16" and storage["stored_float16_values"] > 0

    graph = onnx.load(str(out / decoder.file)).graph
    halves = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert sum(int(np.prod(i.dims)) for i in halves) == storage["stored_float16_values"]

    model = CaptionModel.load(out, intra_op_threads=2)
    names = load_split(flickr8k_dir, "test")[:2]
    images = np.stack([model.preprocess((image_dir(flickr8k_dir) / n).read_bytes()) for n in names])
    for captions in model.caption_images(images, [model.request(beam_size=3)] * 2):
        best = captions[0]
        assert best.attention is not None
        weights = np.asarray(best.attention)
        assert weights.shape == (len(best.tokens), 49)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-4)
