"""Small Keras models with the same signatures as the real encoder and step decoder."""

from __future__ import annotations

from typing import Any

import keras


def tiny_encoder(size: int = 64, feature_dim: int = 16, seed: int = 0) -> Any:
    """Normalised NHWC float32 -> {"pooled": (B, feature_dim)}, like ``build_encoder``."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(image)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(feature_dim, 3, strides=2, padding="same", activation="relu")(x)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, {"pooled": pooled}, name="tiny_encoder")


def tiny_step_model(vocab_size: int, units: int = 16, feature_dim: int = 16, seed: int = 0) -> Any:
    """One LSTM merge step: {"token","h","c","image_features"} -> {"logprobs","h_out","c_out"}."""
    keras.utils.set_random_seed(seed)
    token = keras.Input((), dtype="int32", name="token")
    h = keras.Input((units,), name="h")
    c = keras.Input((units,), name="c")
    feats = keras.Input((feature_dim,), name="image_features")
    emb = keras.layers.Embedding(vocab_size, 8)(token)
    out, (h_out, c_out) = keras.layers.LSTMCell(units)(emb, [h, c])
    merged = keras.layers.Add()([out, keras.layers.Dense(units)(feats)])
    logits = keras.layers.Dense(vocab_size)(keras.layers.Dense(units, activation="relu")(merged))
    logprobs = keras.layers.Activation("log_softmax")(logits)
    outputs = {"logprobs": logprobs, "h_out": h_out, "c_out": c_out}
    return keras.Model({"token": token, "h": h, "c": c, "image_features": feats}, outputs)
