"""Train a caption decoder on cached image features: ``python -m training train``.

``--decoder merge`` trains the merge decoder (``training.model``) on the pooled image vector,
``--decoder attention`` the attention decoder (``training.attention``) on the encoder's grid; the
shipped default model averages two attention runs (``python -m export --run-dir A B``).

Reads top to bottom: config -> data and vocabulary -> image features (cached by
``training.features``) -> tf.data pipeline (one example per caption, teacher forcing: input
``tokens[:-1]``, target ``tokens[1:]``, padded positions weighted 0) -> model + Adam ->
``fit`` with ``RunKeeper``, which after every epoch keeps the best weights by validation
cross-entropy, adjusts the learning rate, stops early and writes a checkpoint.

Resuming: every epoch ends with an atomic checkpoint ``checkpoints/epoch-NNNN/`` (model and
optimizer state, dropout RNG state, best weights so far, and the ``RunState``: early-stopping
and schedule counters, history). The shuffle order of epoch ``e`` is a pure function of
``(seed, e)``, so ``--resume`` after a crash (even SIGKILL mid-epoch) replays the interrupted
epoch on the same examples in the same order, with the same dropout masks.

Scaling out: ``--distribute mirrored`` trains under ``tf.distribute.MirroredStrategy`` (all
local GPUs; ``batch_size`` is the global batch). For a cluster, the same code runs under
``tf.distribute.MultiWorkerMirroredStrategy`` with ``TF_CONFIG`` set on every worker; swap the
strategy in ``_strategy`` (checkpoints should then be written by the chief only).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training import checkpoints, paths
from training.attention import AttentionConfig
from training.attention import build_training_model as build_attention_model
from training.data import image_dir, load_captions, load_split, train_val_split
from training.model import (
    BEST_WEIGHTS_FILE,
    CONFIG_FILE,
    EMBEDDING,
    VOCAB_FILE,
    ModelConfig,
    build_training_model,
)
from training.plots import plot_history
from training.teacher import SoftTargets, distillation_targets
from training.vocab import build_vocabulary, encode_captions

log = logging.getLogger("training.train")

HISTORY_FILE = "history.json"
CURVES_FILE = "loss_curves.png"
CHECKPOINTS = "checkpoints"
MIN_DELTA = 1e-4  # a validation gain smaller than this counts as no improvement
MIN_LR = 1e-6  # the plateau schedule never cuts the learning rate below this


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"  # output folder (config.json, vocab.json, best.weights.h5, ...)
    data_dir: str | None = None  # Flickr8k folder; default $CAPTION_DATA_DIR or ../shared/data/...
    cache_dir: str | None = None  # feature cache; default $CAPTION_CACHE_DIR or <repo>/cache
    encoder: str = "efficientnet_lite0"  # image encoder name (training.encoders.ENCODER_NAMES)
    weights: str | None = "imagenet"  # encoder weights: "imagenet", a file, or None (random init)
    input_size: int | None = None  # encoder input side override (None: the encoder's default)
    limit: int | None = None  # use only the first N official train images (smoke runs, tests)
    val_size: int = 500  # validation images held out from the end of the train list
    min_count: int = 5  # words seen fewer times in train captions become <unk>
    max_length: int = 20  # longest caption in tokens incl. <start>/<end> (95th pct is 18 + 2)
    units: int = 256  # LSTM units = image projection size = merged size
    embed_dim: int | None = None  # word embedding size; None: 256, or 50 with --glove
    glove: bool = False  # initialise the embedding from GloVe-6B-50d (forces embed_dim 50)
    merge: str = "add"  # how image and language meet: "add" or "concat"
    dropout: float = 0.5  # dropout on image features, embeddings and the merged representation
    batch_size: int = 64  # captions per step (global batch under --distribute)
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    lr: float = 1e-3  # initial Adam learning rate
    lr_schedule: str = "plateau"  # "constant", "plateau" (x lr_factor on no val gain) or "cosine"
    lr_factor: float = 0.5  # plateau: multiply the learning rate by this ...
    lr_patience: int = 1  # ... after this many epochs without validation improvement
    patience: int = 3  # early stopping: epochs without validation improvement before stopping
    label_smoothing: float = 0.0  # spread this much target mass uniformly over the vocabulary
    seed: int = 42  # model initialisation, dropout and shuffle order
    mixed_precision: bool = False  # mixed_float16 compute (useful on GPUs; logits stay float32)
    distribute: str = "none"  # "none" or "mirrored" (tf.distribute.MirroredStrategy)
    decoder: str = "merge"  # "merge" (pooled vector) or "attention" (7x7 grid, training.attention)
    cell: str = "lstm"  # attention decoder's recurrent cell: "lstm" or "gru"
    attention_dim: int = 256  # attention decoder: hidden size of the additive attention
    coverage: float = 0.0  # attention decoder: doubly stochastic attention penalty weight (0: off)
    teacher: str | None = None  # bundle to distil (word level: its top-k next-word distribution)
    kd_weight: float = 0.5  # with --teacher: the loss's share that follows the teacher (rest: CE)
    kd_top_k: int = 8  # with --teacher: teacher words kept per position (cached compactly)
    kd_temperature: float = 1.0  # with --teacher: soften teacher and student by this (Hinton's T)
    teacher_captions: bool = False  # with --teacher: its beam caption per train image as a target

    def __post_init__(self) -> None:
        choices = {
            "merge": ("add", "concat"),
            "lr_schedule": ("constant", "plateau", "cosine"),
            "distribute": ("none", "mirrored"),
            "decoder": ("merge", "attention"),
            "cell": ("lstm", "gru"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.glove and self.embed_dim not in (None, 50):
            raise ValueError("--glove needs embed_dim 50 (GloVe-6B-50d vectors)")
        if self.limit is not None and self.limit < 2:
            raise ValueError("limit must be at least 2 images (train and validation)")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {self.kd_weight}")
        if self.kd_top_k < 1:
            raise ValueError(f"kd_top_k must be >= 1, got {self.kd_top_k}")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}")
        if self.teacher_captions and not self.teacher:
            raise ValueError("--teacher-captions needs --teacher")

    @property
    def embedding_size(self) -> int:
        return 50 if self.glove else (self.embed_dim or 256)

    @classmethod
    def from_saved(cls, saved: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """The config a run saved in its ``config.json`` (which also holds the model's config
        and data counts); fields an older run lacks come from ``base`` (default: the defaults)."""
        defaults = asdict(base if base is not None else cls())
        return cls(**{k: saved.get(k, v) for k, v in defaults.items()})


# ----------------------------------------------------------------------------------- data


@dataclass
class Prepared:
    vocab_size: int
    features: np.ndarray  # float32 (images, D) or grid (images, N, D): train images, then val
    train: tuple[np.ndarray, np.ndarray]  # (image row per caption, token ids (N, max_length))
    val: tuple[np.ndarray, np.ndarray]
    encoder: dict[str, Any]  # name, weights, feature_dim, preprocessing... ("encoder_info")
    counts: dict[str, int]
    soft: SoftTargets | None = None  # the teacher's top-k targets of the train examples
    names: list[str] = field(default_factory=list)  # image of each features row


def prepare(cfg: TrainConfig, run_dir: Path) -> Prepared:
    from training.encoders import encoder_info
    from training.features import extract_features

    data_dir = paths.default_data_dir(cfg.data_dir)
    captions = load_captions(data_dir)
    official = load_split(data_dir, "train")
    val_size = cfg.val_size
    if cfg.limit is not None:
        official = official[: cfg.limit]
        val_size = min(val_size, max(1, cfg.limit // 5))
    train_images, val_images = train_val_split(official, val_size)

    vocab = build_vocabulary(captions, train_images, cfg.min_count)
    vocab.save(run_dir / VOCAB_FILE)

    images = train_images + val_images
    role = "grid" if cfg.decoder == "attention" else "pooled"
    info = encoder_info(cfg.encoder, weights=cfg.weights, input_size=cfg.input_size)
    features = extract_features(
        [image_dir(data_dir) / name for name in images],
        encoder=cfg.encoder,
        weights=cfg.weights,
        input_size=cfg.input_size,
        roles=(role,),
        cache_dir=paths.default_cache_dir(cfg.cache_dir),
    )[role].astype(np.float32, copy=False)

    def examples(names: list[str], first_row: int) -> tuple[np.ndarray, np.ndarray]:
        rows = [first_row + i for i, name in enumerate(names) for _ in captions[name]]
        texts = [text for name in names for text in captions[name]]
        return np.asarray(rows, np.int32), encode_captions(vocab, texts, cfg.max_length)

    train, val = examples(train_images, 0), examples(val_images, len(train_images))
    soft = None
    if cfg.teacher:
        targets = distillation_targets(
            Path(cfg.teacher),
            vocab.tokens,
            [image_dir(data_dir) / name for name in train_images],
            train,
            top_k=cfg.kd_top_k,
            with_captions=cfg.teacher_captions,
            cache_dir=paths.default_cache_dir(cfg.cache_dir),
        )
        if targets.captions is not None:  # one more reference per train image
            rows = np.arange(len(train_images), dtype=np.int32)
            train = (np.concatenate([train[0], rows]), np.concatenate([train[1], targets.captions]))
        soft = targets.train
    encoder = {
        "name": info.name,
        "weights": cfg.weights,
        "input_size": cfg.input_size,
        "feature_dim": info.feature_dim,
        "grid_size": info.grid_size,
        "preprocessing": info.preprocessing.model_dump(),
        "weights_desc": info.weights_desc,
    }
    counts = {
        "train_images": len(train_images),
        "val_images": len(val_images),
        "train_captions": len(train[0]),
        "val_captions": len(val[0]),
    }
    return Prepared(len(vocab), features, train, val, encoder, counts, soft, images)


def make_dataset(
    features: np.ndarray,
    examples: tuple[np.ndarray, np.ndarray],
    batch_size: int,
    epochs: range,
    seed: int | None,
    soft: SoftTargets | None = None,
    top_k: int = 0,
) -> tf.data.Dataset:
    """Batches for ``epochs`` back to back; epoch ``e`` is shuffled by ``(seed, e)`` (or not at
    all when ``seed`` is None). Each batch is cut to its longest caption.

    With ``top_k`` > 0 the targets are packed for ``DistilledCrossEntropy``: (B, T, 1 + 2k) =
    [target id, the teacher's k word ids, their k probabilities], the teacher part from ``soft``
    (zeros without it: validation is scored against the references only)."""
    feats, rows, tokens = tf.constant(features), tf.constant(examples[0]), tf.constant(examples[1])
    n = len(examples[0])
    if soft is not None:
        if soft.ids.shape[:2] != (n, examples[1].shape[1] - 1) or soft.top_k != top_k:
            raise ValueError("soft targets do not match the examples")
        teacher = tf.constant(
            np.concatenate([soft.ids.astype(np.float32), soft.probs.astype(np.float32)], -1)
        )
    else:
        teacher = tf.zeros((n, examples[1].shape[1] - 1, 2 * top_k), tf.float32)

    def epoch_ids(epoch: tf.Tensor) -> tf.data.Dataset:
        ids = tf.range(n)
        if seed is not None:
            pair = tf.stack([tf.constant(seed, tf.int64), epoch])
            ids = tf.random.experimental.stateless_shuffle(ids, seed=pair)
        return tf.data.Dataset.from_tensor_slices(ids).batch(batch_size)

    def to_batch(ids: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
        seq = tf.gather(tokens, ids)
        longest = tf.reduce_max(tf.reduce_sum(tf.cast(seq != 0, tf.int32), axis=1))
        seq = seq[:, :longest]
        targets = seq[:, 1:]
        inputs = {"image_features": tf.gather(feats, tf.gather(rows, ids)), "tokens": seq[:, :-1]}
        weights = tf.cast(targets != 0, tf.float32)
        if top_k:
            packed = tf.gather(teacher, ids)[:, : longest - 1]
            targets = tf.concat([tf.cast(targets, tf.float32)[..., None], packed], -1)
        return inputs, targets, weights

    batches = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_ids)
    known = batches.apply(
        tf.data.experimental.assert_cardinality(len(epochs) * -(-n // batch_size))
    )
    return known.map(to_batch).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------------- loss


def _token_losses(targets: Any, logits: Any, smoothing: float) -> Any:
    logprobs = keras.ops.log_softmax(keras.ops.cast(logits, "float32"), axis=-1)
    targets = keras.ops.cast(targets, "int32")
    nll = -keras.ops.squeeze(
        keras.ops.take_along_axis(logprobs, keras.ops.expand_dims(targets, -1), axis=-1), -1
    )
    if smoothing:
        nll = (1.0 - smoothing) * nll - smoothing * keras.ops.mean(logprobs, axis=-1)
    return nll


class MaskedCrossEntropy(keras.losses.Loss):  # type: ignore[misc]
    """Per-token cross-entropy (optionally label-smoothed), averaged over real tokens: the
    dataset's sample weights are 1 for real targets and 0 for padding."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "masked_ce") -> None:
        super().__init__(name=name, reduction="mean_with_sample_weight")
        self.label_smoothing = label_smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return _token_losses(y_true, y_pred, self.label_smoothing)


class DistilledCrossEntropy(keras.losses.Loss):  # type: ignore[misc]
    """Knowledge distillation (Hinton et al. 2015, word level): per token,
    ``(1 - w) * CE(reference) + w * T^2 * CE(teacher_T, student_T)``, averaged over real tokens,
    where ``teacher_T`` is the teacher's top-k distribution raised to ``1 / T`` and renormalised
    and ``student_T`` the softmax of the student's logits over ``T``. The second term is the KL
    divergence to the teacher up to a constant; ``T`` > 1 shows the student how the teacher ranks
    the words it did not pick (``T^2`` keeps the gradient's scale). A position without teacher
    mass (validation) keeps only the first term. Targets are packed by ``make_dataset`` as
    [target id, k teacher ids, k probabilities]."""

    def __init__(
        self,
        label_smoothing: float,
        kd_weight: float,
        top_k: int,
        temperature: float = 1.0,
        name: str = "distilled_ce",
    ) -> None:
        super().__init__(name=name, reduction="mean_with_sample_weight")
        self.label_smoothing, self.kd_weight, self.top_k = label_smoothing, kd_weight, top_k
        self.temperature = temperature

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        ce = _token_losses(y_true[..., 0], y_pred, self.label_smoothing)
        t = self.temperature
        logprobs = ops.log_softmax(ops.cast(y_pred, "float32") / t, axis=-1)
        ids = ops.cast(y_true[..., 1 : 1 + self.top_k], "int32")
        probs = y_true[..., 1 + self.top_k :]
        mass = ops.sum(probs, axis=-1, keepdims=True)
        if t != 1.0:
            probs = ops.power(probs, 1.0 / t)
        probs = probs / ops.maximum(ops.sum(probs, axis=-1, keepdims=True), 1e-12)
        kd = -(t * t) * ops.sum(probs * ops.take_along_axis(logprobs, ids, axis=-1), axis=-1)
        weight = self.kd_weight * ops.cast(ops.squeeze(mass, -1) > 0, "float32")
        return (1.0 - weight) * ce + weight * kd


def token_ce(y_true: Any, y_pred: Any) -> Any:
    """Unsmoothed per-token cross-entropy against the reference: the figure early stopping and
    the plots use (reads the target id out of packed distillation targets)."""
    if len(y_true.shape) == len(y_pred.shape):
        y_true = y_true[..., 0]
    return _token_losses(y_true, y_pred, 0.0)


# ----------------------------------------------------------------------------------- run state


@dataclass
class Epoch:
    """One finished epoch: a row of ``history.json``'s ``epochs``."""

    epoch: int  # counted from 1
    lr: float  # learning rate the epoch trained with
    loss: float  # training loss (label-smoothed when label_smoothing > 0)
    ce: float  # training cross-entropy per token, unsmoothed
    val_loss: float
    val_ce: float  # what early stopping, the schedule and the best weights go by
    seconds: float  # wall time of the epoch


@dataclass
class RunState:
    """Where a run stands after its last finished epoch; a checkpoint's ``state.json``.

    The dropout RNG state is not here: it lives in the model's variables (``rng.npz``).
    """

    epoch: int = 0  # epochs finished; the next one to train is epoch + 1
    best_val_ce: float = math.inf  # lowest validation cross-entropy so far
    best_epoch: int = 0  # the epoch that reached it (0: none yet)
    wait: int = 0  # epochs since the last improvement (early stopping)
    lr_wait: int = 0  # epochs since the last improvement or learning-rate cut (plateau)
    lr: float = 1e-3  # learning rate of the next epoch
    stopped: bool = False  # early stopping ended the run
    history: list[Epoch] = field(default_factory=list)  # every finished epoch, in order

    def finish_epoch(self, row: Epoch, cfg: TrainConfig) -> bool:
        """Record ``row`` and update the counters; True when it is the best epoch so far.
        The caller applies the learning rate this leaves in ``lr``."""
        self.history.append(row)
        self.epoch = row.epoch
        self.lr = row.lr
        improved = row.val_ce < self.best_val_ce - MIN_DELTA
        if improved:
            self.best_val_ce, self.best_epoch, self.wait, self.lr_wait = row.val_ce, row.epoch, 0, 0
        else:
            self.wait += 1
            self.lr_wait += 1
            if cfg.lr_schedule == "plateau" and self.lr_wait >= cfg.lr_patience:
                self.lr = max(row.lr * cfg.lr_factor, MIN_LR)
                self.lr_wait = 0
        self.stopped = self.wait >= cfg.patience
        return improved

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> RunState:
        """Read a ``state.json``; every checkpoint written so far has this layout."""
        history = [Epoch(**row) for row in saved.get("history", [])]
        return cls(**{**saved, "history": history})

    def history_json(self) -> dict[str, Any]:
        """The contents of ``history.json``."""
        return {
            "epochs": [asdict(row) for row in self.history],
            "best_epoch": self.best_epoch,
            "best_val_ce": self.best_val_ce,
            "stopped_early": self.stopped,
        }


# ----------------------------------------------------------------------------------- checkpoints


def latest_checkpoint(run_dir: Path) -> Path | None:
    return checkpoints.latest(run_dir / CHECKPOINTS, "epoch")


class RunKeeper(keras.callbacks.Callback):  # type: ignore[misc]
    """End of every epoch: record history, keep the best weights, adjust the learning rate,
    decide early stopping, then write an atomic checkpoint (``checkpoints/epoch-NNNN``)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, state: RunState) -> None:
        super().__init__()
        self.cfg, self.run_dir, self.state = cfg, run_dir, state
        self._started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        optimizer = self.model.optimizer
        row = Epoch(
            epoch=epoch + 1,
            lr=float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            loss=float(logs["loss"]),
            ce=float(logs["ce"]),
            val_loss=float(logs["val_loss"]),
            val_ce=float(logs["val_ce"]),
            seconds=round(time.monotonic() - self._started, 2),
        )
        if self.state.finish_epoch(row, self.cfg):
            tmp = self.run_dir / f".{BEST_WEIGHTS_FILE}.tmp.weights.h5"
            self.model.save_weights(tmp)
            os.replace(tmp, self.run_dir / BEST_WEIGHTS_FILE)
        if self.state.lr != row.lr:  # the plateau schedule cut it
            optimizer.learning_rate = self.state.lr
            self.state.lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))  # float32
        if self.state.stopped:
            self.model.stop_training = True
        self._checkpoint()
        checkpoints.write_json(self.run_dir / HISTORY_FILE, self.state.history_json())
        history = [asdict(e) for e in self.state.history]
        plot_history(history, self.run_dir / CURVES_FILE, self.cfg.label_smoothing)

    def _checkpoint(self) -> None:
        def save_rng(folder: Path) -> None:
            np.savez(
                folder / "rng.npz", *[keras.ops.convert_to_numpy(v) for v in _rng_state(self.model)]
            )

        checkpoints.save(
            self.run_dir / CHECKPOINTS,
            "epoch",
            f"{self.state.epoch:04d}",
            model=self.model,
            optimizer=self.model.optimizer,
            state=self.state.to_json(),
            best_weights=self.run_dir / BEST_WEIGHTS_FILE,
            extra=save_rng,
        )


def _rng_state(model: keras.Model) -> list[Any]:
    """The dropout layers' seed-generator states (variables, but not weights)."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def restore_checkpoint(ckpt: Path, run_dir: Path, model: keras.Model) -> RunState:
    """Load ``ckpt`` into ``model`` (weights, optimizer, dropout RNG) and ``run_dir`` (best
    weights); return its run state."""
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    saved = checkpoints.restore(
        ckpt, model=model, optimizer=optimizer, best_weights=run_dir / BEST_WEIGHTS_FILE
    )
    state = RunState.from_json(saved)
    if (ckpt / "rng.npz").exists():  # checkpoints written before the RNG state was kept lack it
        with np.load(ckpt / "rng.npz") as rng:
            for i, variable in enumerate(_rng_state(model)):
                variable.assign(rng[f"arr_{i}"])
    return state


# ----------------------------------------------------------------------------------- main


def _strategy(cfg: TrainConfig) -> tf.distribute.Strategy:
    if cfg.distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False) -> Path:
    """Run (or continue, with ``resume``) a training run; returns the run folder."""
    run_dir = Path(cfg.run_dir)
    config_path = run_dir / CONFIG_FILE
    if resume and config_path.exists():
        saved = json.loads(config_path.read_text())
        cfg = TrainConfig.from_saved({**saved, "run_dir": str(run_dir)}, base=cfg)
        log.info("resume: using the run's saved config %s", config_path)
    elif config_path.exists() and not force:
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume or --force")
    if force and not resume:
        for name in (CHECKPOINTS, BEST_WEIGHTS_FILE, HISTORY_FILE, CURVES_FILE):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(cfg.seed)
    data = prepare(cfg, run_dir)
    model_cfg: ModelConfig | AttentionConfig
    if cfg.decoder == "attention":
        model_cfg = AttentionConfig(
            vocab_size=data.vocab_size,
            feature_dim=data.features.shape[-1],
            grid_size=data.features.shape[1],
            units=cfg.units,
            embed_dim=cfg.embedding_size,
            attention_dim=cfg.attention_dim,
            cell=cfg.cell,  # type: ignore[arg-type]
            dropout=cfg.dropout,
            coverage=cfg.coverage,
        )
    else:
        model_cfg = ModelConfig(
            vocab_size=data.vocab_size,
            feature_dim=data.features.shape[1],
            units=cfg.units,
            embed_dim=cfg.embedding_size,
            merge=cfg.merge,  # type: ignore[arg-type]
            dropout=cfg.dropout,
        )
    checkpoints.write_json(
        config_path,
        {
            **asdict(cfg),
            "model": asdict(model_cfg),
            "vocab_size": data.vocab_size,
            "feature_dim": model_cfg.feature_dim,
            "encoder_info": data.encoder,
            "data": data.counts,
        },
    )
    log.info("data: %s, vocabulary %d tokens", data.counts, data.vocab_size)

    steps = math.ceil(len(data.train[0]) / cfg.batch_size)
    previous_policy = keras.mixed_precision.global_policy()
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with _strategy(cfg).scope():
            if isinstance(model_cfg, AttentionConfig):
                model = build_attention_model(model_cfg)
            else:
                model = build_training_model(model_cfg)
            if cfg.glove:
                from service.vocabulary import Vocabulary
                from training.glove import glove_matrix

                init = glove_matrix(Vocabulary.load(run_dir / VOCAB_FILE), seed=cfg.seed)
                model.get_layer(EMBEDDING).set_weights([init.matrix])
                log.info("GloVe: %d of %d words found", init.found, data.vocab_size - 4)
            lr: float | keras.optimizers.schedules.LearningRateSchedule = cfg.lr
            if cfg.lr_schedule == "cosine":
                lr = keras.optimizers.schedules.CosineDecay(cfg.lr, cfg.epochs * steps, alpha=0.05)
            loss: keras.losses.Loss = MaskedCrossEntropy(cfg.label_smoothing)
            if cfg.teacher:
                loss = DistilledCrossEntropy(
                    cfg.label_smoothing, cfg.kd_weight, cfg.kd_top_k, cfg.kd_temperature
                )
            model.compile(
                optimizer=keras.optimizers.Adam(lr),
                loss=loss,
                weighted_metrics=[keras.metrics.MeanMetricWrapper(token_ce, name="ce")],
            )
            state = RunState(lr=cfg.lr)
            ckpt = latest_checkpoint(run_dir) if resume else None
            if ckpt is not None:
                state = restore_checkpoint(ckpt, run_dir, model)
                if cfg.lr_schedule != "cosine":
                    model.optimizer.learning_rate = state.lr
                log.info("resuming from epoch %d (checkpoint %s)", state.epoch, ckpt.name)
            elif resume:
                log.info("resume: no complete checkpoint yet, starting at epoch 0")

        if state.stopped or state.epoch >= cfg.epochs:
            log.info("run already finished (epoch %d)", state.epoch)
            return run_dir
        epochs = range(state.epoch, cfg.epochs)
        top_k = cfg.kd_top_k if cfg.teacher else 0
        model.fit(
            make_dataset(
                data.features, data.train, cfg.batch_size, epochs, cfg.seed, data.soft, top_k
            ),
            validation_data=make_dataset(
                data.features, data.val, cfg.batch_size, range(1), None, None, top_k
            ),
            epochs=cfg.epochs,
            initial_epoch=state.epoch,
            steps_per_epoch=steps,
            callbacks=[RunKeeper(cfg, run_dir, state)],
            shuffle=False,  # the dataset is already shuffled per epoch
            verbose=1 if sys.stdout.isatty() else 2,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    log.info("best epoch %d, val CE %.4f", state.best_epoch, state.best_val_ce)
    return run_dir
