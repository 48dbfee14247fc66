"""Self-critical sequence training (Rennie et al. 2017): fine-tune an attention run for CIDEr-D.

``python -m training scst --from RUN --run-dir OUT``. Each step takes ``batch_images`` train
images (their cached grid features, as in training), samples ``samples`` captions per image from
the decoder, decodes one greedy caption per image as the baseline, and follows the policy
gradient ``-(CIDEr-D(sample) - CIDEr-D(greedy)) * log p(sample)``. A sample is rewarded only for
beating what the model would say anyway, so no learned baseline is needed. CIDEr-D's document
frequencies come from the train references only (``training.cider``).

Dropout is off in both the sampling and the gradient pass: the sampled caption is the one whose
probability the gradient changes, and the run is a pure function of its inputs and seeds.

Every ``eval_every`` steps the greedy captions of the validation images are scored (CIDEr-D with
the train frequencies, plus ``training.caption_habits``: repeated bigrams, dangling endings,
diversity, length, gender words), the best weights by that CIDEr-D are kept as
``best.weights.h5`` (only from points whose shares of dangling endings and repeated bigrams have
not risen past ``max_dangling_rise`` / ``max_repeat_rise``), and an atomic checkpoint is
written (``checkpoints/step-NNNNNN``: weights, optimizer, ``state.json`` last). The images of
epoch ``e`` come in an order fixed by ``(seed, e)`` and the samples of step ``s`` by ``(seed,
s)``, so ``--resume`` after SIGKILL replays the interrupted steps exactly.

The output folder is a run folder (``config.json``, ``vocab.json``, ``best.weights.h5``,
``history.json`` of the cross-entropy run it started from) that ``python -m export`` reads, plus
``scst.json`` (config, reward and validation history) and ``scst_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray
from tqdm import tqdm

from service.vocabulary import Vocabulary
from training import checkpoints, paths
from training.attention import AttentionConfig
from training.attention import build_training_model as build_attention_model
from training.caption_habits import caption_habits
from training.cider import CiderD
from training.data import load_captions
from training.model import BEST_WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE
from training.sampling import Decoder, policy_loss, words
from training.train import HISTORY_FILE, TrainConfig, prepare

log = logging.getLogger("training.scst")

SCST_FILE = "scst.json"
CURVES_FILE = "scst_curves.png"
CHECKPOINTS = "checkpoints"


@dataclass
class ScstConfig:
    run_dir: str = "runs/scst"  # output run folder (exportable)
    init_run: str = "runs/default"  # the attention run to start from (its best weights)
    data_dir: str | None = None  # Flickr8k folder; default $CAPTION_DATA_DIR or ../shared/data/...
    cache_dir: str | None = None  # feature cache; default $CAPTION_CACHE_DIR or <repo>/cache
    epochs: int = 3  # passes over the train images
    max_steps: int | None = None  # stop after this many steps in all (tests, smoke runs)
    batch_images: int = 16  # images per step
    samples: int = 5  # sampled captions per image
    lr: float = 5e-5  # Adam learning rate
    eval_every: int = 50  # steps between validation scores, best-weight checks and checkpoints
    seed: int = 42  # image order per epoch and the samples of each step
    limit: int | None = None  # use only the first N official train images (tests)
    max_dangling_rise: float = 0.01  # a point whose share of dangling endings rose more is not kept
    max_repeat_rise: float = 0.05  # same for the share of captions with a repeated bigram

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScstConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ScstState:
    """Where a run stands; a checkpoint's ``state.json``."""

    step: int = 0  # steps finished
    best_step: int = 0  # the validation point with the highest CIDEr-D (0: the start)
    best_cider: float = -math.inf
    steps: list[dict[str, float]] = field(default_factory=list)  # per step: rewards, loss
    validation: list[dict[str, Any]] = field(default_factory=list)  # per eval point

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScstState:
        return cls(**data)


# ----------------------------------------------------------------------------------- run


@dataclass
class _Data:
    vocab: Vocabulary
    train_grid: NDArray[np.float32]
    val_grid: NDArray[np.float32]
    train_refs: list[list[list[str]]]
    val_refs: dict[str, list[str]]
    val_names: list[str]


def _load_data(cfg: ScstConfig, source: TrainConfig, scratch: Path) -> _Data:
    limit = cfg.limit if cfg.limit is not None else source.limit
    base = asdict(source) | {"teacher": None, "teacher_captions": False, "limit": limit}
    base |= {"data_dir": cfg.data_dir, "cache_dir": cfg.cache_dir, "run_dir": str(scratch)}
    prepared = prepare(TrainConfig(**base), scratch)
    vocab = Vocabulary.load(Path(cfg.init_run) / VOCAB_FILE)
    captions = load_captions(paths.default_data_dir(cfg.data_dir))
    names = prepared.names
    n_train = prepared.counts["train_images"]
    refs = [[c.split() for c in captions[n]] for n in names[:n_train]]
    val_names = names[n_train:]
    return _Data(
        vocab,
        prepared.features[:n_train],
        prepared.features[n_train:],
        refs,
        {n: captions[n] for n in val_names},
        val_names,
    )


class Trainer:
    """One SCST run: data, model, optimizer, and the step / validate / checkpoint loop."""

    def __init__(self, cfg: ScstConfig, *, resume: bool) -> None:
        self.cfg, self.run_dir = cfg, Path(cfg.run_dir)
        source_dir = Path(cfg.init_run)
        saved = json.loads((source_dir / CONFIG_FILE).read_text())
        self.source = TrainConfig.from_saved({**saved, "run_dir": str(source_dir)})
        if self.source.decoder != "attention":
            raise ValueError(f"{source_dir} is not an attention run: SCST needs its grid decoder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG_FILE, VOCAB_FILE, HISTORY_FILE):
            if (source_dir / name).exists():
                shutil.copy2(source_dir / name, self.run_dir / name)
        config = json.loads((self.run_dir / CONFIG_FILE).read_text())
        checkpoints.write_json(self.run_dir / CONFIG_FILE, {**config, "scst": asdict(cfg)})

        with tempfile.TemporaryDirectory() as scratch:  # prepare() writes a vocabulary
            self.data = _load_data(cfg, self.source, Path(scratch))
        self.cider = CiderD(self.data.train_refs)
        self.model = build_attention_model(AttentionConfig.from_dict(saved["model"]))
        self.model.load_weights(source_dir / BEST_WEIGHTS_FILE)
        self.optimizer = keras.optimizers.Adam(cfg.lr)
        self.optimizer.build(self.model.trainable_variables)
        vocab = self.data.vocab
        self.decoder = Decoder(self.model, self.source.max_length, vocab.start_id, vocab.end_id)
        self.state = ScstState()
        ckpt = checkpoints.latest(self.run_dir / CHECKPOINTS, "step") if resume else None
        if ckpt is not None:
            self._restore(ckpt)
            log.info("resuming from step %d (checkpoint %s)", self.state.step, ckpt.name)
        elif resume:
            log.info("resume: no complete checkpoint yet, starting at step 0")
        self._train_step = tf.function(self._gradient_step, reduce_retracing=True)

    # ---------------------------------------------------------------- schedule

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.train_grid) / self.cfg.batch_images)

    @property
    def total_steps(self) -> int:
        total = self.cfg.epochs * self.steps_per_epoch
        return min(total, self.cfg.max_steps) if self.cfg.max_steps is not None else total

    def batch_of(self, step: int) -> NDArray[np.int64]:
        """The train images of ``step``: epoch ``e``'s order is a function of (seed, e)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.data.train_grid))
        size = self.cfg.batch_images
        return order[index * size : (index + 1) * size]

    # ---------------------------------------------------------------- one step

    def _gradient_step(
        self, grid: tf.Tensor, sampled: tf.Tensor, advantage: tf.Tensor
    ) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = policy_loss(self.model, grid, sampled, advantage, self.data.vocab.start_id)
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    def step(self, step: int) -> dict[str, float]:
        images = self.batch_of(step)
        grid = self.data.train_grid[images]
        k = self.cfg.samples
        sampled = self.decoder.sample(grid, k, (self.cfg.seed, step))
        greedy = self.decoder.greedy(grid)
        rows = np.repeat(images, k)
        sample_reward = self.cider.score_batch(words(self.data.vocab, sampled), rows.tolist())
        greedy_reward = self.cider.score_batch(words(self.data.vocab, greedy), images.tolist())
        advantage = sample_reward - np.repeat(greedy_reward, k)
        loss = self._train_step(
            tf.constant(grid), tf.constant(sampled), tf.constant(advantage, tf.float32)
        )
        return {
            "step": step + 1,
            "sample_reward": float(sample_reward.mean()),
            "greedy_reward": float(greedy_reward.mean()),
            "loss": float(loss),
        }

    # ---------------------------------------------------------------- validation

    def validate(self) -> dict[str, Any]:
        """Greedy captions of the validation images: CIDEr-D (train frequencies) and habits."""
        texts: dict[str, str] = {}
        grid, names = self.data.val_grid, self.data.val_names
        for start in range(0, len(names), 100):
            ids = self.decoder.greedy(grid[start : start + 100])
            for name, row in zip(
                names[start : start + 100], words(self.data.vocab, ids), strict=True
            ):
                texts[name] = " ".join(row)
        refs = self.data.val_refs
        scores = [self.cider.score(texts[n].split(), [r.split() for r in refs[n]]) for n in names]
        habits = caption_habits(texts, refs).to_dict()
        return {"step": self.state.step, "cider_d": float(np.mean(scores)), **habits}

    # ---------------------------------------------------------------- checkpoints

    def _checkpoint(self) -> None:
        checkpoints.save(
            self.run_dir / CHECKPOINTS,
            "step",
            f"{self.state.step:06d}",
            model=self.model,
            optimizer=self.optimizer,
            state=asdict(self.state),
            best_weights=self.run_dir / BEST_WEIGHTS_FILE,
        )

    def _restore(self, ckpt: Path) -> None:
        saved = checkpoints.restore(
            ckpt,
            model=self.model,
            optimizer=self.optimizer,
            best_weights=self.run_dir / BEST_WEIGHTS_FILE,
        )
        self.state = ScstState.from_json(saved)

    def _keep_if_best(self, row: dict[str, Any]) -> None:
        """Keep the weights of the best validation point that does not game CIDEr-D: SCST learns
        to end captions on "with a" or to repeat phrases when that pays, so a point whose
        shares of those rose past the limits over the starting point's is never kept."""
        start = self.state.validation[0] if self.state.validation else row
        row["eligible"] = bool(
            row["dangling_end"] <= start["dangling_end"] + self.cfg.max_dangling_rise
            and row["repeated_bigram"] <= start["repeated_bigram"] + self.cfg.max_repeat_rise
        )
        self.state.validation.append(row)
        if row["eligible"] and row["cider_d"] > self.state.best_cider:
            self.state.best_cider, self.state.best_step = row["cider_d"], row["step"]
            tmp = self.run_dir / f".{BEST_WEIGHTS_FILE}.tmp.weights.h5"
            self.model.save_weights(tmp)
            os.replace(tmp, self.run_dir / BEST_WEIGHTS_FILE)

    def _record(self) -> None:
        self._checkpoint()
        checkpoints.write_json(
            self.run_dir / SCST_FILE, {"config": asdict(self.cfg), **asdict(self.state)}
        )
        from training.plots import plot_scst

        plot_scst(self.state.steps, self.state.validation, self.run_dir / CURVES_FILE)

    # ---------------------------------------------------------------- loop

    def run(self) -> ScstState:
        if self.state.step == 0 and not self.state.validation:
            self._keep_if_best(self.validate())  # the starting point is a candidate too
            log.info("start: val CIDEr-D %.4f", self.state.best_cider)
        total = self.total_steps
        with tqdm(
            total=total, initial=self.state.step, unit="step", desc="scst", file=sys.stderr
        ) as bar:
            while self.state.step < total:
                started = time.monotonic()
                row = self.step(self.state.step)
                row["seconds"] = round(time.monotonic() - started, 3)
                self.state.steps.append(row)
                self.state.step += 1
                bar.update(1)
                bar.set_postfix(
                    reward=f"{row['sample_reward']:.3f}", greedy=f"{row['greedy_reward']:.3f}"
                )
                if self.state.step % self.cfg.eval_every == 0 or self.state.step == total:
                    validation = self.validate()
                    self._keep_if_best(validation)
                    log.info(
                        "step %d: val CIDEr-D %.4f, repeated bigrams %.3f, dangling %.3f",
                        self.state.step,
                        validation["cider_d"],
                        validation["repeated_bigram"],
                        validation["dangling_end"],
                    )
                    self._record()
        log.info("best step %d, val CIDEr-D %.4f", self.state.best_step, self.state.best_cider)
        return self.state


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training scst",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--from", dest="init_run", required=True, help="attention run to start from"
    )
    parser.add_argument("--run-dir", required=True, help="output run folder")
    defaults = ScstConfig()
    for name in ("data_dir", "cache_dir"):
        parser.add_argument("--" + name.replace("_", "-"), default=None)
    for name in ("epochs", "batch_images", "samples", "eval_every", "seed"):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None)
    for name in ("lr", "max_dangling_rise", "max_repeat_rise"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=float, default=getattr(defaults, name))
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    resume = args.pop("resume")
    cfg = ScstConfig.from_dict(args)
    keras.utils.set_random_seed(cfg.seed)
    state = Trainer(cfg, resume=resume).run()
    print(
        json.dumps(
            {"run_dir": cfg.run_dir, "best_step": state.best_step, "best_cider_d": state.best_cider}
        )
    )
    return 0
