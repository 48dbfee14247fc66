"""Attention caption decoder (Show, Attend and Tell, soft attention) and its one-step twin.

Training model (teacher forcing over whole captions)::

    grid (B, N, D) -> Dropout -> Dense(U, relu) = values (B, N, U)       [N = 7x7 for Lite0]
    tokens (B, T) -> Embedding(V, E) -> Dropout = words (B, T, E)
    for t in 0..T-1 (``keras.ops.scan``), state s = (h, c) for LSTM or (h,) for GRU, zeros at t=0:
        scores = v . tanh(K values + Q h)          (B, N)     Bahdanau / additive attention
        alpha  = softmax(scores)                    (B, N)
        ctx    = sigmoid(G h) * sum_n alpha_n values_n    (B, U) gated context (SAT's beta)
        h, s   = cell([word_t ; ctx], s)           context fed to the cell every step
    [h_t ; ctx_t ; word_t] -> Dropout -> Dense(V) = logits (B, T, V)

Optional doubly stochastic regularisation (``coverage`` > 0): the attention each cell receives
over a caption, ``sum_t alpha_tn``, is pulled towards an even share ``len / N``, as in Show,
Attend and Tell, with weight ``coverage`` (added to the loss by ``AttentionCoverage``).

Step model (``service.manifest.DecoderSpec``): inputs ``token`` int32 (B,), ``h`` (and ``c`` for
LSTM) float32 (B, U), ``image_features`` = the grid float32 (B, N, D); outputs ``logprobs``
(B, V) log-softmax, ``h_out`` (and ``c_out``), ``attention`` (B, N): the weights that produced
this token. The layers carry the training model's names, so ``copy_weights_to_step_model`` in
``training.model`` copies the weights by name; dropout is absent (identity at inference).

Serving split (``memory_models``): everything the step model computes from the grid alone, the
projected cells ``values`` and the attention ``keys``, is the same at every step and for every
beam of an image. ``build_memory_head`` computes it once per image as ``memory`` = ``[values ;
keys]`` (B, N, U + A); exported after the encoder, it makes the encoder graph emit ``memory``
(feature role ``memory``), and ``build_memory_step_model`` reads it in place of the grid. Same
weights, same arithmetic: per step this saves the (N x D x U + N x U x A) projection, which
dominates the step's cost with Lite0's 1280-channel grid.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import keras
from keras import layers, ops

Cell = Literal["lstm", "gru"]

GRID_DENSE = "grid_dense"
EMBEDDING = "embedding"
ATTENTION_RNN = "attention_rnn"
LOGITS = "logits"
ARCHITECTURES: dict[str, str] = {"lstm": "attention_lstm", "gru": "attention_gru"}


@dataclass(frozen=True)
class AttentionConfig:
    """Sizes of the attention decoder; saved in the run's ``config.json`` under ``"model"``."""

    vocab_size: int
    """Number of tokens including the four specials."""
    feature_dim: int
    """Channels D of each grid cell (1280 for Lite0)."""
    grid_size: int
    """Number of grid cells N (49 for a 7x7 grid)."""
    units: int = 256
    """Recurrent units U; also the size of the projected grid cells and of the context."""
    embed_dim: int = 256
    """Word embedding size E."""
    attention_dim: int = 256
    """Size A of the additive attention's hidden layer."""
    cell: Cell = "lstm"
    """Recurrent cell: ``lstm`` (states h, c) or ``gru`` (state h)."""
    dropout: float = 0.5
    """Dropout on the grid features, the embeddings and the output representation."""
    coverage: float = 0.0
    """Weight of the doubly stochastic attention penalty (0 = off)."""

    def __post_init__(self) -> None:
        if self.vocab_size <= 4:
            raise ValueError("vocab_size must exceed the 4 special tokens")
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {self.cell!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.coverage < 0:
            raise ValueError(f"coverage must be >= 0, got {self.coverage}")

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h", "c") if self.cell == "lstm" else ("h",)

    @property
    def architecture(self) -> str:
        return ARCHITECTURES[self.cell]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class _AttentionCore(layers.Layer):  # type: ignore[misc]
    """The weights shared by the sequence and the step layer (same order, same shapes)."""

    def __init__(self, units: int, attention_dim: int, cell: Cell = "lstm", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units, self.attention_dim, self.cell_kind = units, attention_dim, cell
        self.key_dense = layers.Dense(attention_dim, name="key")
        self.query_dense = layers.Dense(attention_dim, use_bias=False, name="query")
        self.score_dense = layers.Dense(1, name="score")
        self.gate_dense = layers.Dense(units, activation="sigmoid", name="gate")
        if cell == "lstm":
            self.cell: layers.Layer = layers.LSTMCell(units, name="cell")
        elif cell == "gru":
            self.cell = layers.GRUCell(units, name="cell")
        else:
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")

    @property
    def n_states(self) -> int:
        return 2 if self.cell_kind == "lstm" else 1

    def build_core(self, word_dim: int, value_dim: int) -> None:
        self.key_dense.build((None, None, value_dim))
        self.query_dense.build((None, self.units))
        self.score_dense.build((None, None, self.attention_dim))
        self.gate_dense.build((None, self.units))
        self.cell.build((None, word_dim + value_dim))

    def attend(self, h: Any, values: Any, keys: Any) -> tuple[Any, Any]:
        """(context (B, U), alpha (B, N)) for previous state ``h`` (B, U)."""
        hidden = ops.tanh(keys + ops.expand_dims(self.query_dense(h), 1))
        alpha = ops.softmax(ops.squeeze(self.score_dense(hidden), -1), axis=-1)
        context = ops.sum(ops.expand_dims(alpha, -1) * values, axis=1)
        return self.gate_dense(h) * context, alpha

    def advance(self, word: Any, context: Any, states: list[Any]) -> tuple[Any, list[Any]]:
        h, new = self.cell(ops.concatenate([word, context], axis=-1), states)
        return h, list(new) if isinstance(new, list | tuple) else [new]

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(units=self.units, attention_dim=self.attention_dim, cell=self.cell_kind)
        return config


@keras.saving.register_keras_serializable(package="captioner")
class AttentionRNN(_AttentionCore):
    """Teacher-forced pass: words (B, T, E), values (B, N, U) -> (h, ctx, alpha) over T."""

    def build(self, words_shape: Any, values_shape: Any) -> None:
        self.build_core(int(words_shape[-1]), int(values_shape[-1]))

    def call(self, words: Any, values: Any) -> tuple[Any, Any, Any]:
        keys = self.key_dense(values)
        import tensorflow as tf  # the training graph only (tf.scan); the step model has no loop

        batch, n, units = ops.shape(words)[0], self.n_states, self.units
        zeros = ops.zeros((batch, units), dtype=words.dtype)
        init = (
            tuple(zeros for _ in range(n)),
            zeros,
            zeros,
            ops.zeros((batch, ops.shape(values)[1]), dtype=words.dtype),
        )

        def step(previous: tuple[Any, ...], word: Any) -> tuple[Any, ...]:
            states = list(previous[0])
            context, alpha = self.attend(states[0], values, keys)
            h, new = self.advance(word, context, states)
            return tuple(new), h, context, alpha

        _, hs, contexts, alphas = tf.scan(step, ops.transpose(words, (1, 0, 2)), initializer=init)
        order = (1, 0, 2)
        return (
            ops.transpose(hs, order),
            ops.transpose(contexts, order),
            ops.transpose(alphas, order),
        )

    def compute_output_spec(self, words: Any, values: Any) -> tuple[Any, Any, Any]:
        batch, steps = words.shape[0], words.shape[1]
        return (
            keras.KerasTensor((batch, steps, self.units), dtype=words.dtype),
            keras.KerasTensor((batch, steps, self.units), dtype=words.dtype),
            keras.KerasTensor((batch, steps, values.shape[1]), dtype=words.dtype),
        )


@keras.saving.register_keras_serializable(package="captioner")
class AttentionStep(_AttentionCore):
    """One step: word (B, E), values (B, N, U), states -> (h, ctx, alpha, new states)."""

    def build(self, word_shape: Any, values_shape: Any, *states_shape: Any) -> None:
        self.build_core(int(word_shape[-1]), int(values_shape[-1]))

    def call(self, word: Any, values: Any, *states: Any) -> tuple[Any, ...]:
        context, alpha = self.attend(states[0], values, self.key_dense(values))
        h, new = self.advance(word, context, list(states))
        return (h, context, alpha, *new)


@keras.saving.register_keras_serializable(package="captioner")
class AttentionMemoryStep(_AttentionCore):
    """One step reading the precomputed memory: word (B, E), memory (B, N, U + A), states.

    ``memory[..., :U]`` are the projected cells (values), ``memory[..., U:]`` their keys; the
    layer owns the same weights as ``AttentionStep`` (``key`` unused here) so names still match.
    """

    def build(self, word_shape: Any, memory_shape: Any, *states_shape: Any) -> None:
        self.build_core(int(word_shape[-1]), self.units)

    def call(self, word: Any, memory: Any, *states: Any) -> tuple[Any, ...]:
        values, keys = memory[..., : self.units], memory[..., self.units :]
        context, alpha = self.attend(states[0], values, keys)
        h, new = self.advance(word, context, list(states))
        return (h, context, alpha, *new)


@keras.saving.register_keras_serializable(package="captioner")
class AttentionCoverage(layers.Layer):  # type: ignore[misc]
    """Adds ``weight * mean_b sum_n (len_b / N - sum_t alpha_btn)^2`` to the loss (identity)."""

    def __init__(self, weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weight = weight

    def call(self, alphas: Any, tokens: Any) -> Any:
        if self.weight > 0:
            mask = ops.cast(ops.not_equal(tokens, 0), alphas.dtype)  # (B, T) real input tokens
            received = ops.sum(alphas * ops.expand_dims(mask, -1), axis=1)  # (B, N)
            share = ops.sum(mask, axis=1, keepdims=True) / ops.cast(
                ops.shape(alphas)[-1], "float32"
            )
            self.add_loss(self.weight * ops.mean(ops.sum(ops.square(share - received), axis=-1)))
        return alphas

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(weight=self.weight)
        return config


def _core(cfg: AttentionConfig, kind: type[_AttentionCore]) -> _AttentionCore:
    return kind(cfg.units, cfg.attention_dim, cfg.cell, name=ATTENTION_RNN)


def _logits(cfg: AttentionConfig, h: Any, context: Any, words: Any, dropout: bool) -> Any:
    x = layers.Concatenate(name="deep_output")([h, context, words])
    if dropout:
        x = layers.Dropout(cfg.dropout, name="output_dropout")(x)
    return layers.Dense(cfg.vocab_size, dtype="float32", name=LOGITS)(x)


def build_training_model(cfg: AttentionConfig) -> keras.Model:
    """Inputs ``{"image_features": (B, N, D), "tokens": (B, T) int32}`` -> logits (B, T, V)."""
    grid = keras.Input((cfg.grid_size, cfg.feature_dim), dtype="float32", name="image_features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")

    values = layers.Dropout(cfg.dropout, name="grid_dropout")(grid)
    values = layers.Dense(cfg.units, activation="relu", name=GRID_DENSE)(values)
    words = layers.Embedding(cfg.vocab_size, cfg.embed_dim, name=EMBEDDING)(tokens)
    words = layers.Dropout(cfg.dropout, name="embedding_dropout")(words)

    h, context, alphas = _core(cfg, AttentionRNN)(words, values)
    if cfg.coverage > 0:
        alphas = AttentionCoverage(cfg.coverage, name="coverage")(alphas, tokens)
        # keep the coverage layer in the graph: its output joins the logits through a zero
        h = h + 0.0 * ops.sum(alphas, axis=-1, keepdims=True)
    logits = _logits(cfg, h, context, words, dropout=True)
    return keras.Model(
        inputs={"image_features": grid, "tokens": tokens}, outputs=logits, name="attention_decoder"
    )


def _step_model(
    cfg: AttentionConfig, image: Any, values: Any, core: _AttentionCore, name: str
) -> keras.Model:
    """The step graph around ``core`` fed with ``values`` (computed from the ``image`` input)."""
    token = keras.Input((), dtype="int32", name="token")
    states = [keras.Input((cfg.units,), dtype="float32", name=n) for n in cfg.state_names]
    words = layers.Embedding(cfg.vocab_size, cfg.embed_dim, name=EMBEDDING)(token)
    h, context, alpha, *new = core(words, values, *states)
    logits = _logits(cfg, h, context, words, dropout=False)
    outputs = {
        "logprobs": layers.Activation("log_softmax", dtype="float32", name="logprobs")(logits),
        "attention": layers.Identity(dtype="float32", name="attention")(alpha),
    }
    for state_name, state in zip(cfg.state_names, new, strict=True):
        outputs[f"{state_name}_out"] = layers.Identity(dtype="float32", name=f"{state_name}_out")(
            state
        )
    inputs = {
        "token": token,
        **dict(zip(cfg.state_names, states, strict=True)),
        "image_features": image,
    }
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def build_step_model(cfg: AttentionConfig) -> keras.Model:
    """One decoding step for a batch; see the module docstring for the exact interface."""
    grid = keras.Input((cfg.grid_size, cfg.feature_dim), dtype="float32", name="image_features")
    values = layers.Dense(cfg.units, activation="relu", name=GRID_DENSE)(grid)
    return _step_model(cfg, grid, values, _core(cfg, AttentionStep), f"{cfg.architecture}_step")


def memory_dim(cfg: AttentionConfig) -> int:
    """Width of one ``memory`` cell: the projected cell (U) then its attention key (A)."""
    return cfg.units + cfg.attention_dim


def build_memory_head(cfg: AttentionConfig) -> keras.Model:
    """Grid (B, N, D) -> ``memory`` (B, N, U + A); weights from ``copy_memory_weights``."""
    grid = keras.Input((cfg.grid_size, cfg.feature_dim), dtype="float32", name="grid")
    values = layers.Dense(cfg.units, activation="relu", name=GRID_DENSE)(grid)
    keys = layers.Dense(cfg.attention_dim, name="memory_key")(values)
    memory = layers.Concatenate(name="memory")([values, keys])
    return keras.Model(grid, memory, name="attention_memory")


def build_memory_step_model(cfg: AttentionConfig) -> keras.Model:
    """``build_step_model`` reading ``image_features`` = memory (B, N, U + A), not the grid."""
    memory = keras.Input((cfg.grid_size, memory_dim(cfg)), dtype="float32", name="image_features")
    core = _core(cfg, AttentionMemoryStep)
    return _step_model(cfg, memory, memory, core, f"{cfg.architecture}_memory_step")


def memory_models(step_model: keras.Model, cfg: AttentionConfig) -> tuple[keras.Model, keras.Model]:
    """(memory head, memory step model) with the weights of a loaded ``build_step_model``."""
    head = build_memory_head(cfg)
    head.get_layer(GRID_DENSE).set_weights(step_model.get_layer(GRID_DENSE).get_weights())
    core = step_model.get_layer(ATTENTION_RNN)
    head.get_layer("memory_key").set_weights(core.key_dense.get_weights())
    fast = build_memory_step_model(cfg)
    for layer in fast.layers:
        if layer.weights and layer.name != GRID_DENSE:
            layer.set_weights(step_model.get_layer(layer.name).get_weights())
    return head, fast
