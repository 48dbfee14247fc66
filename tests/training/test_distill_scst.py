"""Knowledge distillation and self-critical training on tiny real runs: the KD loss is finite
and falls, the teacher's targets are what its ONNX decoder says, SCST raises the reward on a
tiny overfit set, and an SCST run killed with SIGKILL resumes to the same end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.train

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY: dict[str, Any] = {
    "decoder": "attention",
    "limit": 40,
    "units": 16,
    "embed_dim": 16,
    "attention_dim": 16,
    "min_count": 2,
    "batch_size": 16,
    "lr": 3e-3,
}


def _train(root: Path, data_dir: Path, cache: Path, **overrides: Any) -> Path:
    from training.train import TrainConfig, train

    settings = {**TINY, **overrides}
    cfg = TrainConfig(run_dir=str(root), data_dir=str(data_dir), cache_dir=str(cache), **settings)
    return train(cfg)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory, flickr8k_dir: Path, cache: Path) -> Path:
    """A tiny cross-entropy attention run: the teacher's and SCST's starting point."""
    return _train(tmp_path_factory.mktemp("source"), flickr8k_dir, cache, epochs=6, patience=6)


@pytest.fixture(scope="module")
def teacher_bundle(
    source_run: Path, tmp_path_factory: pytest.TempPathFactory, flickr8k_dir: Path
) -> Path:
    from export.bundle import ExportOptions, write_bundle
    from export.run import sources_from_run

    out = tmp_path_factory.mktemp("models") / "teacher"
    options = ExportOptions(name="teacher", version="0.0.1", data_dir=flickr8k_dir)
    return write_bundle(sources_from_run(source_run), out, options)


# ----------------------------------------------------------------------------------- KD


def test_distilled_loss_is_the_reference_ce_without_teacher_mass() -> None:
    from training.train import DistilledCrossEntropy, MaskedCrossEntropy

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 10)).astype(np.float32)
    targets = np.array([[4, 5, 0], [1, 2, 3]])
    weights = (targets != 0).astype(np.float32)
    packed = np.zeros((2, 3, 1 + 2 * 2), np.float32)
    packed[..., 0] = targets
    plain = float(MaskedCrossEntropy(0.1)(targets, logits, weights))
    kd = DistilledCrossEntropy(0.1, kd_weight=0.5, top_k=2)
    assert float(kd(packed, logits, weights)) == pytest.approx(plain, rel=1e-5)

    # a teacher sure of word 7: the loss moves half-way to -log q(7)
    packed[..., 1] = 7
    packed[..., 3] = 0.9  # renormalised over the kept words: 1.0
    logq = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logq, targets[..., None], -1)[..., 0]
    smoothed = 0.9 * ce - 0.1 * logq.mean(-1)
    expected = ((0.5 * smoothed - 0.5 * logq[..., 7]) * weights).sum() / weights.sum()
    assert float(kd(packed, logits, weights)) == pytest.approx(expected, rel=1e-5)

    # temperature 2: both distributions softened, the KD term scaled by T^2 = 4
    packed[..., 2], packed[..., 3:] = 3, [0.64, 0.16]  # to the power 1/2: 0.8, 0.4 -> 2/3, 1/3
    soft = np.array([0.8, 0.4]) / 1.2
    logq2 = logits / 2 - np.log(np.exp(logits / 2).sum(-1, keepdims=True))
    kd_term = -4 * (soft[0] * logq2[..., 7] + soft[1] * logq2[..., 3])
    expected = ((0.5 * smoothed + 0.5 * kd_term) * weights).sum() / weights.sum()
    warm = DistilledCrossEntropy(0.1, kd_weight=0.5, top_k=2, temperature=2.0)
    assert float(warm(packed, logits, weights)) == pytest.approx(expected, rel=1e-5)


def test_teacher_targets_follow_the_teacher_decoder(
    teacher_bundle: Path, source_run: Path, flickr8k_dir: Path
) -> None:
    from service.model import CaptionModel
    from service.vocabulary import Vocabulary
    from training.teacher import encode_images, load_teacher, soft_targets
    from training.vocab import encode_captions

    vocab = Vocabulary.load(source_run / "vocab.json")
    model = load_teacher(teacher_bundle, vocab.tokens)
    assert isinstance(model, CaptionModel)
    image = next((flickr8k_dir / "images").glob("*.jpg"))
    memory = encode_images(model, [image])
    tokens = encode_captions(vocab, ["a dog runs on the grass"], 10)
    targets = soft_targets(model, memory, np.zeros(1, np.int32), tokens, top_k=4)
    # position 0: the teacher's distribution after <start>, best first
    out = model.step(tokens[:, 0], [np.zeros((1, 16), np.float32)] * 2, memory.astype(np.float32))
    p = np.exp(out.logprobs[0])
    assert list(targets.ids[0, 0]) == list(np.argsort(-p)[:4])
    assert targets.probs[0, 0] == pytest.approx(np.sort(p)[::-1][:4], abs=1e-3)
    length = int((tokens != 0).sum())  # <start> 6 words <end>
    assert (targets.probs[0, : length - 1].sum(-1) > 0).all()
    assert (targets.probs[0, length - 1 :] == 0).all()  # nothing past <end>

    with pytest.raises(ValueError, match="another vocabulary"):
        load_teacher(teacher_bundle, vocab.tokens[:-1])


def test_distilled_run_trains_and_its_loss_falls(
    teacher_bundle: Path, tmp_path: Path, flickr8k_dir: Path, cache: Path
) -> None:
    run = _train(
        tmp_path / "student",
        flickr8k_dir,
        cache,
        epochs=3,
        patience=3,
        teacher=str(teacher_bundle),
        teacher_captions=True,
        label_smoothing=0.1,
    )
    history = json.loads((run / "history.json").read_text())["epochs"]
    losses = [row["loss"] for row in history]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    config = json.loads((run / "config.json").read_text())
    # 32 train images, 5 references each, plus one teacher caption each
    assert config["data"]["train_captions"] == 32 * 5 + 32
    assert list((cache / "teacher").glob("*.npz"))  # cached for the next run


# ----------------------------------------------------------------------------------- SCST


def test_cider_rewards_rise_on_a_tiny_overfit_set(
    source_run: Path, tmp_path: Path, flickr8k_dir: Path, cache: Path
) -> None:
    from training.scst import ScstConfig, Trainer

    cfg = ScstConfig(
        run_dir=str(tmp_path / "scst"),
        init_run=str(source_run),
        data_dir=str(flickr8k_dir),
        cache_dir=str(cache),
        limit=10,  # 8 train images, seen over and over
        batch_images=8,
        samples=5,
        lr=3e-3,
        max_steps=40,
        epochs=40,
        eval_every=20,
    )
    state = Trainer(cfg, resume=False).run()
    rewards = [row["sample_reward"] for row in state.steps]
    losses = [row["loss"] for row in state.steps]
    assert all(np.isfinite(losses)), losses
    first, last = np.mean(rewards[:8]), np.mean(rewards[-8:])
    assert last > first + 0.1, rewards
    scst = json.loads((tmp_path / "scst" / "scst.json").read_text())
    assert [row["step"] for row in scst["validation"]] == [0, 20, 40]
    for key in ("cider_d", "repeated_bigram", "dangling_end", "distinct", "mean_length"):
        assert key in scst["validation"][-1]
    assert (tmp_path / "scst" / "best.weights.h5").is_file()
    assert (tmp_path / "scst" / "scst_curves.png").is_file()


def _scst_cli(run_dir: Path, source: Path, data_dir: Path, cache: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "training", "scst", "--from", str(source)]
    args += ["--run-dir", str(run_dir), "--data-dir", str(data_dir), "--cache-dir", str(cache)]
    args += ["--batch-images", "8", "--samples", "3", "--lr", "1e-3", "--eval-every", "4"]
    return [*args, "--max-steps", "12", "--epochs", "10", *extra]


def _run_to_end(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_scst_resumes_after_sigkill_where_an_uninterrupted_run_ends(
    source_run: Path, tmp_path: Path, flickr8k_dir: Path, cache: Path
) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    reference = tmp_path / "uninterrupted"
    _run_to_end(_scst_cli(reference, source_run, flickr8k_dir, cache), env)

    run_dir = tmp_path / "killed"
    log_path = tmp_path / "killed.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            _scst_cli(run_dir, source_run, flickr8k_dir, cache),
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        first = run_dir / "checkpoints" / "step-000004" / "state.json"
        # stop waiting if the run dies: its log says why
        wait_until(
            lambda: first.exists() or proc.poll() is not None,
            what="the first SCST checkpoint",
            timeout=240,
            interval=0.02,
        )
        assert first.exists(), log_path.read_text()[-3000:]
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = json.loads(next((run_dir / "checkpoints").glob("step-*/state.json")).read_text())
    assert 4 <= killed_at["step"] < 12

    resumed = _run_to_end(_scst_cli(run_dir, source_run, flickr8k_dir, cache, "--resume"), env)
    assert f"resuming from step {killed_at['step']}" in resumed.stderr
    got = json.loads((run_dir / "scst.json").read_text())
    want = json.loads((reference / "scst.json").read_text())
    assert [row["step"] for row in got["steps"]] == list(range(1, 13))
    for mine, theirs in zip(got["steps"], want["steps"], strict=True):
        assert mine["sample_reward"] == pytest.approx(theirs["sample_reward"], abs=1e-6)
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4, abs=1e-5)
    assert [r["cider_d"] for r in got["validation"]] == pytest.approx(
        [r["cider_d"] for r in want["validation"]], abs=1e-6
    )
    assert got["best_step"] == want["best_step"]
