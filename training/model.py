"""The merge caption decoder (Tanti et al., 2018) and its one-step twin for export.

Training model (teacher forcing over whole captions)::

    image_features (B, D) -> Dropout -> Dense(units, relu)  ------------------.
    tokens (B, T) -> Embedding(V, E, mask_zero) -> Dropout -> LSTM(units) -> merge (add | concat)
        -> Dense(units, relu) -> Dropout -> Dense(V) = logits (B, T, V)

The image never enters the LSTM: it is merged with the language state after it, so the
recurrent part is a pure language model and the step is cheap.

Step model (the serving contract in ``service.manifest.DecoderSpec``): inputs ``token`` int32
(B,), ``h`` and ``c`` float32 (B, units), ``image_features`` float32 (B, D); outputs
``logprobs`` (B, V) (log-softmax), ``h_out``, ``c_out``. It is built from the same layer types
with the same names, so ``copy_weights_to_step_model`` copies weights by name; running it token
by token reproduces the training model's log-softmaxed logits. Dropout is absent from the step
model (it is the identity at inference).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import keras
from keras import layers, ops

from service.vocabulary import Vocabulary

if TYPE_CHECKING:
    from training.attention import AttentionConfig

MergeMode = Literal["add", "concat"]

# Layer names shared by the training and the step model (weights are copied by name).
IMAGE_DENSE = "image_dense"
EMBEDDING = "embedding"
LSTM = "lstm"
MERGE = "merge"
MERGE_DENSE = "merge_dense"
LOGITS = "logits"


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the merge decoder; saved in the run's ``config.json`` under ``"model"``."""

    vocab_size: int
    """Number of tokens including the four specials."""
    feature_dim: int
    """Size D of the pooled image feature vector."""
    units: int = 256
    """LSTM units U; also the size of the image projection and of the merged representation."""
    embed_dim: int = 256
    """Word embedding size (50 when initialised from GloVe-6B-50d)."""
    merge: MergeMode = "add"
    """How the image projection meets the LSTM output: elementwise ``add`` or ``concat``."""
    dropout: float = 0.5
    """Dropout rate on the image features, the embeddings and the merged representation."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@keras.saving.register_keras_serializable(package="captioner")
class Merge(layers.Layer):  # type: ignore[misc]
    """Combine the language state (B, T, U) or (B, U) with the image projection (B, U).

    ``add`` sums them (broadcasting the image over time), ``concat`` joins them on the last
    axis. The padding mask stops here: the loss weights padded positions itself.
    """

    def __init__(self, mode: MergeMode = "add", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("add", "concat"):
            raise ValueError(f"merge mode must be 'add' or 'concat', got {mode!r}")
        self.mode: MergeMode = mode

    def call(self, language: Any, image: Any) -> Any:
        if len(language.shape) == 3:
            image = ops.expand_dims(image, 1)
            if self.mode == "concat":
                image = ops.broadcast_to(
                    image, (ops.shape(language)[0], ops.shape(language)[1], image.shape[-1])
                )
        if self.mode == "add":
            return language + image
        return ops.concatenate([language, image], axis=-1)

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"mode": self.mode})
        return config


def _check(cfg: ModelConfig) -> None:
    if cfg.vocab_size <= 4:
        raise ValueError("vocab_size must exceed the 4 special tokens")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")


def _head(cfg: ModelConfig, merged: Any, dropout: bool) -> Any:
    x = layers.Dense(cfg.units, activation="relu", name=MERGE_DENSE)(merged)
    if dropout:
        x = layers.Dropout(cfg.dropout, name="merge_dropout")(x)
    # float32 logits even under a mixed_float16 policy (stable softmax / loss).
    return layers.Dense(cfg.vocab_size, dtype="float32", name=LOGITS)(x)


def build_training_model(cfg: ModelConfig) -> keras.Model:
    """Inputs ``{"image_features": (B, D) float32, "tokens": (B, T) int32}`` -> logits (B, T, V)."""
    _check(cfg)
    features = keras.Input((cfg.feature_dim,), dtype="float32", name="image_features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")

    image = layers.Dropout(cfg.dropout, name="image_dropout")(features)
    image = layers.Dense(cfg.units, activation="relu", name=IMAGE_DENSE)(image)

    words = layers.Embedding(cfg.vocab_size, cfg.embed_dim, mask_zero=True, name=EMBEDDING)(tokens)
    words = layers.Dropout(cfg.dropout, name="embedding_dropout")(words)
    language = layers.LSTM(cfg.units, return_sequences=True, name=LSTM)(words)

    merged = Merge(cfg.merge, name=MERGE)(language, image)
    logits = _head(cfg, merged, dropout=True)
    return keras.Model(
        inputs={"image_features": features, "tokens": tokens},
        outputs=logits,
        name="merge_decoder",
    )


def build_step_model(cfg: ModelConfig) -> keras.Model:
    """One decoding step for a batch; see the module docstring for the exact interface."""
    _check(cfg)
    token = keras.Input((), dtype="int32", name="token")
    h = keras.Input((cfg.units,), dtype="float32", name="h")
    c = keras.Input((cfg.units,), dtype="float32", name="c")
    features = keras.Input((cfg.feature_dim,), dtype="float32", name="image_features")

    image = layers.Dense(cfg.units, activation="relu", name=IMAGE_DENSE)(features)
    words = layers.Embedding(cfg.vocab_size, cfg.embed_dim, name=EMBEDDING)(token)
    # The same cell the LSTM layer runs, called once: its weights are the LSTM layer's weights.
    cell = layers.LSTMCell(cfg.units, name=LSTM)
    h_out, (_, c_out) = cell(words, [h, c])

    merged = Merge(cfg.merge, name=MERGE)(h_out, image)
    logits = _head(cfg, merged, dropout=False)
    logprobs = layers.Activation("log_softmax", dtype="float32", name="logprobs")(logits)
    h_out = layers.Identity(dtype="float32", name="h_out")(h_out)
    c_out = layers.Identity(dtype="float32", name="c_out")(c_out)
    return keras.Model(
        inputs={"token": token, "h": h, "c": c, "image_features": features},
        outputs={"logprobs": logprobs, "h_out": h_out, "c_out": c_out},
        name="merge_decoder_step",
    )


def copy_weights_to_step_model(training_model: keras.Model, step_model: keras.Model) -> None:
    """Copy every weighted layer of the step model from the training layer with the same name."""
    copied = 0
    for layer in step_model.layers:
        if not layer.weights:
            continue
        source = training_model.get_layer(layer.name)
        values = source.get_weights()
        if [w.shape for w in values] != [tuple(w.shape) for w in layer.weights]:
            raise ValueError(f"layer {layer.name!r}: weight shapes differ between the models")
        layer.set_weights(values)
        copied += 1
    if copied == 0:
        raise ValueError("no weights copied: the models share no weighted layer names")


@dataclass
class LoadedRun:
    """A finished (or interrupted) training run, ready for evaluation or export."""

    run_dir: Path
    config: dict[str, Any]
    """The run's ``config.json``: TrainConfig fields plus ``model``, ``vocab_size``,
    ``feature_dim``, ``encoder_info`` (name, weights, preprocessing...) and ``data`` counts."""
    model_config: ModelConfig | AttentionConfig
    """``AttentionConfig`` when the run's config says ``"decoder": "attention"``."""
    vocab: Vocabulary
    training_model: keras.Model
    """With the best validation-loss weights."""
    step_model: keras.Model
    """Same weights, one step at a time (the export source)."""


CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
BEST_WEIGHTS_FILE = "best.weights.h5"


def load_run(run_dir: Path) -> LoadedRun:
    """Rebuild both models from ``run_dir/config.json`` and load ``best.weights.h5``."""
    run_dir = Path(run_dir)
    weights = run_dir / BEST_WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: has the run finished an epoch?")
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    model_config: ModelConfig | AttentionConfig
    if config.get("decoder", "merge") == "attention":
        from training import attention

        model_config = attention.AttentionConfig.from_dict(config["model"])
        training_model = attention.build_training_model(model_config)
        step_model = attention.build_step_model(model_config)
    else:
        model_config = ModelConfig.from_dict(config["model"])
        training_model = build_training_model(model_config)
        step_model = build_step_model(model_config)
    vocab = Vocabulary.load(run_dir / VOCAB_FILE)
    if len(vocab) != model_config.vocab_size:
        raise ValueError(
            f"vocab.json has {len(vocab)} tokens, the model expects {model_config.vocab_size}"
        )
    training_model.load_weights(weights)
    copy_weights_to_step_model(training_model, step_model)
    return LoadedRun(run_dir, config, model_config, vocab, training_model, step_model)


def model_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    return asdict(cfg)
