"""What self-critical training runs on the decoder: sampling, greedy decoding, the policy loss.

``Decoder`` decodes with the attention training model's own layers (dropout off), all steps in
one ``tf.function``: ``sample`` draws captions with seeds fixed by the caller, ``greedy`` takes
the most likely word. ``policy_loss`` is REINFORCE with a baseline: ``-mean(advantage * log
p(caption))`` over the sampled rows, recomputed teacher-forced so the gradient reaches every
weight. ``training.scst`` drives them.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from service.vocabulary import Vocabulary
from training.attention import ATTENTION_RNN, EMBEDDING, GRID_DENSE, LOGITS


class Decoder:
    """Sampling and greedy decoding with the training model's own layers (dropout off)."""

    def __init__(self, model: keras.Model, max_length: int, start_id: int, end_id: int) -> None:
        self.model, self.steps = model, max_length - 1
        self.start_id, self.end_id = start_id, end_id
        self._grid = model.get_layer(GRID_DENSE)
        self._embedding = model.get_layer(EMBEDDING)
        self._core = model.get_layer(ATTENTION_RNN)
        self._logits = model.get_layer(LOGITS)
        self._decode = tf.function(self._run, reduce_retracing=True)

    def _run(self, grid: tf.Tensor, repeats: int, seed: tf.Tensor, greedy: bool) -> tf.Tensor:
        values = tf.repeat(self._grid(grid), repeats, axis=0)
        keys = self._core.key_dense(values)
        rows = tf.shape(values)[0]
        zeros = tf.zeros((rows, self._core.units))
        states = [zeros] * self._core.n_states
        token = tf.fill((rows,), self.start_id)
        done = tf.zeros((rows,), tf.bool)
        out = []
        for t in range(self.steps):
            word = self._embedding(token)
            context, _ = self._core.attend(states[0], values, keys)
            h, states = self._core.advance(word, context, states)
            logits = self._logits(tf.concat([h, context, word], -1))
            if greedy:
                token = tf.argmax(logits, -1, output_type=tf.int32)
            else:
                pair = tf.stack([seed[0], seed[1] * 64 + t])
                token = tf.random.stateless_categorical(logits, 1, pair, tf.int32)[:, 0]
            token = tf.where(done, 0, token)  # padding after <end>
            out.append(token)
            done = done | tf.equal(token, self.end_id)
        return tf.stack(out, 1)

    def sample(
        self, grid: NDArray[np.float32], samples: int, seed: tuple[int, int]
    ) -> NDArray[np.int32]:
        """(B * samples, steps) sampled ids, image-major, 0 after ``<end>``."""
        out = self._decode(tf.constant(grid), samples, tf.constant(seed, tf.int64), False)
        return np.asarray(out)

    def greedy(self, grid: NDArray[np.float32]) -> NDArray[np.int32]:
        out = self._decode(tf.constant(grid), 1, tf.constant((0, 0), tf.int64), True)
        return np.asarray(out)


def words(vocab: Vocabulary, ids: NDArray[np.int32]) -> list[list[str]]:
    """Each row's words up to ``<end>`` (the text a user would see)."""
    return [vocab.decode([int(i) for i in row]).split() for row in ids]


def policy_loss(
    model: keras.Model,
    grid: tf.Tensor,
    sampled: tf.Tensor,
    advantage: tf.Tensor,
    start_id: int,
) -> tf.Tensor:
    """``-mean_rows(advantage * log p(sampled row))``: each sampled token up to and including
    ``<end>`` counts; rows are image-major over ``grid`` (``len(sampled) / len(grid)`` each)."""
    rows = tf.shape(sampled)[0]
    inputs = tf.concat([tf.fill((rows, 1), start_id), sampled[:, :-1]], 1)
    features = tf.repeat(grid, rows // tf.shape(grid)[0], axis=0)
    logits = model({"image_features": features, "tokens": inputs}, training=False)
    logprobs = tf.nn.log_softmax(tf.cast(logits, tf.float32), -1)
    picked = tf.gather(logprobs, sampled, batch_dims=2)
    mask = tf.cast(sampled != 0, tf.float32)
    sequence = tf.reduce_sum(picked * mask, 1)
    return -tf.reduce_mean(advantage * sequence)
