"""Training: a tiny real run learns, the step model equals the training model (also in ONNX),
and a run killed with SIGKILL resumes from its last checkpoint."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.train

REPO_ROOT = Path(__file__).resolve().parents[2]
# Tiny settings shared by the in-process run and the killed/resumed CLI run (same results).
TINY: dict[str, Any] = {"limit": 40, "units": 32, "embed_dim": 16, "batch_size": 8, "min_count": 2}
TINY.update({"epochs": 4, "lr": 3e-3, "patience": 4})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, flickr8k_dir: Path) -> Path:
    from training.train import TrainConfig, train

    cfg = TrainConfig(
        run_dir=str(tmp_path_factory.mktemp("run")),
        data_dir=str(flickr8k_dir),
        cache_dir=str(cache_dir),
        **TINY,
    )
    return train(cfg)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def test_short_training_lowers_the_loss(tiny_run: Path) -> None:
    history = json.loads((tiny_run / "history.json").read_text())
    rows = history["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    train_ce = [r["ce"] for r in rows]
    val_ce = [r["val_ce"] for r in rows]
    assert all(b < a for a, b in zip(train_ce, train_ce[1:], strict=False)), train_ce
    assert train_ce[-1] < train_ce[0] - 0.5, train_ce
    assert val_ce[-1] < val_ce[0], val_ce
    vocab_size = len(json.loads((tiny_run / "vocab.json").read_text())["tokens"])
    assert val_ce[-1] < np.log(vocab_size) - 1.0, "no better than a uniform guess"
    assert history["best_val_ce"] == min(val_ce)
    for name in ("config.json", "vocab.json", "best.weights.h5", "loss_curves.png"):
        assert (tiny_run / name).is_file(), name
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["data"] == {
        "train_images": 32,
        "val_images": 8,
        "train_captions": 160,
        "val_captions": 40,
    }
    assert config["encoder_info"]["name"] == config["encoder"] == "efficientnet_lite0"
    assert config["encoder_info"]["preprocessing"]["height"] == 224
    assert config["model"]["feature_dim"] == config["feature_dim"] == 1280


def test_step_model_reproduces_training_model(tiny_run: Path, flickr8k_dir: Path) -> None:
    from training.data import load_captions, load_split
    from training.model import load_run
    from training.vocab import encode_captions

    run = load_run(tiny_run)
    names = load_split(flickr8k_dir, "train")[:3]
    captions = [load_captions(flickr8k_dir)[n][0] for n in names]
    tokens = encode_captions(run.vocab, captions, 20)
    features = np.random.default_rng(0).normal(size=(3, 1280)).astype(np.float32)

    logits = run.training_model({"image_features": features, "tokens": tokens}, training=False)
    expected = _log_softmax(np.asarray(logits))
    units = run.model_config.units
    h = np.zeros((3, units), np.float32)
    c = np.zeros((3, units), np.float32)
    for t in range(tokens.shape[1]):
        out = run.step_model({"token": tokens[:, t], "h": h, "c": c, "image_features": features})
        h, c = np.asarray(out["h_out"]), np.asarray(out["c_out"])
        real = (tokens[:, t] != 0) | (t == 0)
        np.testing.assert_allclose(
            np.asarray(out["logprobs"])[real], expected[real, t], atol=1e-5, rtol=0
        )


def test_concat_step_model_converts_to_onnx(tmp_path: Path) -> None:
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from training.model import (
        ModelConfig,
        build_step_model,
        build_training_model,
        copy_weights_to_step_model,
    )

    cfg = ModelConfig(vocab_size=30, feature_dim=12, units=8, embed_dim=6, merge="concat")
    training_model = build_training_model(cfg)
    step = build_step_model(cfg)
    copy_weights_to_step_model(training_model, step)
    signature = [
        tf.TensorSpec((None,), tf.int32, name="token"),
        tf.TensorSpec((None, 8), tf.float32, name="h"),
        tf.TensorSpec((None, 8), tf.float32, name="c"),
        tf.TensorSpec((None, 12), tf.float32, name="image_features"),
    ]

    @tf.function(input_signature=signature)
    def run_step(token, h, c, image_features):  # type: ignore[no-untyped-def]
        return step({"token": token, "h": h, "c": c, "image_features": image_features})

    path = tmp_path / "step.onnx"
    tf2onnx.convert.from_function(
        run_step, input_signature=signature, opset=17, output_path=str(path)
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {
        "token": np.array([1, 5, 7], np.int32),
        "h": rng.normal(size=(3, 8)).astype(np.float32),
        "c": rng.normal(size=(3, 8)).astype(np.float32),
        "image_features": rng.normal(size=(3, 12)).astype(np.float32),
    }
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == ["c_out", "h_out", "logprobs"]
    got = dict(zip(names, session.run(None, feeds), strict=True))
    want = step(feeds)
    for name in names:
        np.testing.assert_allclose(got[name], np.asarray(want[name]), atol=1e-5, rtol=0)


def test_existing_run_needs_resume_or_force(tiny_run: Path) -> None:
    from training.train import TrainConfig, train

    with pytest.raises(FileExistsError, match="--resume or --force"):
        train(TrainConfig(run_dir=str(tiny_run)))


# A checkpoint's state.json as runs have always written it (--resume must keep reading it).
SAVED_STATE: dict[str, Any] = {
    "epoch": 2,
    "best_val_ce": 4.1,
    "best_epoch": 1,
    "wait": 1,
    "lr_wait": 0,
    "lr": 0.0015,
    "stopped": False,
    "history": [
        {
            "epoch": 1,
            "lr": 0.003,
            "loss": 5.0,
            "ce": 5.0,
            "val_loss": 4.1,
            "val_ce": 4.1,
            "seconds": 2.5,
        },
        {
            "ce": 4.0,
            "epoch": 2,
            "loss": 4.0,
            "lr": 0.003,
            "seconds": 2.4,
            "val_ce": 4.2,
            "val_loss": 4.2,
        },
    ],
}


def test_run_state_reads_and_writes_the_checkpoint_layout() -> None:
    from training.train import RunState

    state = RunState.from_json(json.loads(json.dumps(SAVED_STATE)))
    assert (state.epoch, state.best_epoch, state.lr, state.history[1].val_ce) == (2, 1, 0.0015, 4.2)
    assert json.loads(json.dumps(state.to_json())) == SAVED_STATE
    summary = state.history_json()
    assert summary["epochs"] == SAVED_STATE["history"]
    assert (summary["best_epoch"], summary["stopped_early"]) == (1, False)


def test_run_state_cuts_the_rate_on_a_plateau_and_stops_early() -> None:
    from training.train import Epoch, RunState, TrainConfig

    cfg = TrainConfig(lr_schedule="plateau", lr_patience=1, lr_factor=0.5, patience=2)
    state = RunState(lr=1e-3)

    def finish(epoch: int, val_ce: float) -> bool:
        row = Epoch(epoch, state.lr, val_ce, val_ce, val_ce, val_ce, seconds=1.0)
        return state.finish_epoch(row, cfg)

    assert finish(1, 3.0) and state.best_val_ce == 3.0
    assert not finish(2, 3.0 - 5e-5)  # a gain below MIN_DELTA is no improvement
    assert (state.lr, state.wait, state.stopped) == (5e-4, 1, False)
    assert not finish(3, 3.5)
    assert (state.lr, state.best_epoch, state.epoch, state.stopped) == (2.5e-4, 1, 3, True)


def test_cli_help_documents_every_field() -> None:
    import dataclasses

    from training.__main__ import build_parser, field_help
    from training.train import TrainConfig

    helps = field_help()
    assert set(helps) == {f.name for f in dataclasses.fields(TrainConfig)}
    text = _subcommand_help(build_parser(), "train")
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in text
    assert "MultiWorkerMirroredStrategy" in text


def _subcommand_help(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return str(action.choices[name].format_help())
    raise AssertionError(f"no subcommand {name}")


def _cli(run_dir: Path, cache_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "training", "train", "--run-dir", str(run_dir)]
    args += ["--data-dir", str(data_dir), "--cache-dir", str(cache_dir)]
    for key, value in TINY.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return [*args, *extra]


def _kill_and_resume(
    run_dir: Path, cache_dir: Path, data_dir: Path, *extra: str
) -> tuple[dict[str, Any], list[dict[str, Any]], subprocess.CompletedProcess[str]]:
    """Start a CLI run, SIGKILL it just after its first checkpoint (during epoch 2), then run it
    again with ``--resume``; return (the checkpoint's state, the final history, the resume)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log_path = run_dir.parent / f"{run_dir.name}-first.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            _cli(run_dir, cache_dir, data_dir, *extra),
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        first = run_dir / "checkpoints" / "epoch-0001" / "state.json"
        deadline = time.monotonic() + 240
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.exists(), log_path.read_text()[-3000:]
        time.sleep(0.2)  # into epoch 2
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = json.loads(next((run_dir / "checkpoints").glob("epoch-*/state.json")).read_text())
    assert 1 <= killed_at["epoch"] < TINY["epochs"]

    resumed = subprocess.run(
        _cli(run_dir, cache_dir, data_dir, *extra, "--resume"),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from epoch {killed_at['epoch']}" in resumed.stderr
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    return killed_at, history, resumed


def _assert_same_run(history: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    """Same shuffle order, dropout masks and optimizer state as the uninterrupted run."""
    assert [row["epoch"] for row in history] == [row["epoch"] for row in reference]
    for got, want in zip(history, reference, strict=True):
        assert got["val_ce"] == pytest.approx(want["val_ce"], abs=1e-4)
        assert got["ce"] == pytest.approx(want["ce"], abs=1e-4)


def test_resume_after_sigkill(
    tiny_run: Path, tmp_path: Path, cache_dir: Path, flickr8k_dir: Path
) -> None:
    """Kill -9 the training process just after its first checkpoint (during epoch 2), then
    ``--resume``: it continues from the checkpoint's epoch, completes the run, and ends exactly
    where the uninterrupted run with the same settings (``tiny_run``) ended."""
    run_dir = tmp_path / "run"
    killed_at, history, resumed = _kill_and_resume(run_dir, cache_dir, flickr8k_dir)
    assert f"Epoch {killed_at['epoch'] + 1}/4" in resumed.stdout
    assert "Epoch 1/4" not in resumed.stdout
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[: killed_at["epoch"]] == killed_at["history"]
    _assert_same_run(history, json.loads((tiny_run / "history.json").read_text())["epochs"])
    assert (run_dir / "checkpoints" / "epoch-0004" / "state.json").is_file()
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_attention_run_resumes_exactly(tmp_path: Path, cache_dir: Path, flickr8k_dir: Path) -> None:
    """The same for the attention decoder (grid features, label smoothing): killed and resumed,
    it ends where an uninterrupted CLI run ends."""
    extra = ("--decoder", "attention", "--attention-dim", "16", "--label-smoothing", "0.1")
    reference_dir = tmp_path / "uninterrupted"
    done = subprocess.run(
        _cli(reference_dir, cache_dir, flickr8k_dir, *extra),
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _, history, _ = _kill_and_resume(tmp_path / "run", cache_dir, flickr8k_dir, *extra)
    _assert_same_run(history, json.loads((reference_dir / "history.json").read_text())["epochs"])
