"""Batched greedy and beam-search decoding over a step function (numpy only).

One ``decode_batch`` call decodes a batch of images whose requests may differ (greedy next to
beam 5, different lengths): every step calls the model ONCE for all live rows, where a row is a
greedy item or one beam of a beam-search item. Finished items and finished greedy rows leave the
batch, so the batch shrinks as captions end and a batch costs at most ``max_length`` calls.

Conventions:

* ``max_length`` counts generated tokens, ``<end>`` included (``<start>`` is never generated):
  a caption has at most ``max_length - 1`` words when it ends properly, ``max_length`` when cut.
* ``logprob`` is the sum of the log-probabilities of the generated tokens, ``<end>`` included;
  ``score = logprob / steps ** length_penalty`` where ``steps`` is the number of generated tokens
  (``<end>`` included). Hypotheses are ranked by ``score``.
* ``beam_size == 1`` is greedy decoding (argmax at every step, vectorised over rows).
* Beam search keeps ``beam_size`` live beams per item; the best ``2 * beam_size`` expansions are
  examined, an ``<end>`` among the top ``beam_size`` closes a hypothesis. An item stops when it
  has ``num_captions`` finished hypotheses and no live beam can still beat the worst of them
  (log-probabilities only fall, so a beam's best reachable score is bounded exactly), or when
  ``max_length`` is reached, at which point the live beams are closed as they stand.

Kept in one module (about 370 lines): greedy and beam search share the row bookkeeping that lets
both run in the same model call, and the two must change together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]
IntArray = NDArray[np.int32]


@dataclass
class StepOutput:
    """What one decoder step returns for R rows."""

    logprobs: NDArray[np.floating]
    """(R, V) log-probabilities of the next token."""
    states: list[NDArray[np.float32]]
    """New recurrent states, each (R, size), in the order of the inputs."""
    attention: NDArray[np.floating] | None = None
    """(R, N) attention weights over the image grid, for attention decoders."""


class StepFn(Protocol):
    """One decoding step for R rows: previous tokens, states and each row's image features."""

    def __call__(
        self, tokens: IntArray, states: list[FloatArray], image: NDArray[np.float32]
    ) -> StepOutput: ...


@dataclass(frozen=True, kw_only=True)
class DecodeRequest:
    """How to decode one image."""

    beam_size: int = 1
    """1 = greedy; k > 1 = beam search with k live beams."""
    max_length: int
    """Most generated tokens, ``<end>`` included."""
    num_captions: int = 1
    """How many hypotheses to return, best first; at most ``beam_size``."""
    length_penalty: float = 0.7
    """alpha in ``score = logprob / steps ** alpha``; 0 ranks by raw log-probability."""

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if not 1 <= self.num_captions <= self.beam_size:
            raise ValueError(
                f"num_captions must be between 1 and beam_size ({self.beam_size}), "
                f"got {self.num_captions}"
            )
        if not np.isfinite(self.length_penalty) or self.length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {self.length_penalty}")


@dataclass(frozen=True)
class Hypothesis:
    """One decoded caption."""

    tokens: tuple[int, ...]
    """Generated token ids, without ``<start>`` and ``<end>``."""
    logprob: float
    score: float
    attention: NDArray[np.float32] | None = field(default=None, compare=False)
    """(len(tokens), N) attention of each generated token, when the decoder has attention."""
    ended: bool = True
    """False when the caption was cut at ``max_length`` before ``<end>``."""


def _score(logprob: float, steps: int, alpha: float) -> float:
    return logprob / math.pow(max(steps, 1), alpha)


@dataclass
class _Rows:
    """The live rows of the batch, kept in item order."""

    item: NDArray[np.intp]
    tokens: NDArray[np.int32]  # (R, t) generated so far
    logprob: NDArray[np.float64]
    states: list[FloatArray]
    attention: NDArray[np.float32] | None  # (R, t, N)

    def select(
        self,
        parent: NDArray[np.intp],
        token: NDArray[np.int32],
        logprob: NDArray[np.float64],
        out: StepOutput,
    ) -> _Rows:
        attention = None
        if out.attention is not None:
            step_attention = np.asarray(out.attention, dtype=np.float32)[parent][:, None, :]
            previous = self.attention
            attention = (
                step_attention
                if previous is None
                else np.concatenate([previous[parent], step_attention], axis=1)
            )
        return _Rows(
            item=self.item[parent],
            tokens=np.concatenate([self.tokens[parent], token[:, None]], axis=1),
            logprob=logprob,
            states=[np.ascontiguousarray(s[parent]) for s in out.states],
            attention=attention,
        )


def _hypothesis(
    tokens: NDArray[np.int32],
    attention: NDArray[np.float32] | None,
    logprob: float,
    *,
    ended: bool,
    alpha: float,
) -> Hypothesis:
    steps = len(tokens) + (1 if ended else 0)
    return Hypothesis(
        tokens=tuple(int(t) for t in tokens),
        logprob=float(logprob),
        score=_score(float(logprob), steps, alpha),
        attention=None if attention is None else attention[: len(tokens)].copy(),
        ended=ended,
    )


@dataclass
class _Items:
    """Per-item request settings as arrays, and the n-th best finished score so far."""

    beam: NDArray[np.intp]
    max_len: NDArray[np.intp]
    num: NDArray[np.intp]
    alpha: NDArray[np.float64]
    nth_best: NDArray[np.float64]  # -inf until an item has num_captions finished hypotheses
    finished: list[list[Hypothesis]]

    @classmethod
    def of(cls, requests: Sequence[DecodeRequest]) -> _Items:
        return cls(
            beam=np.array([r.beam_size for r in requests], dtype=np.intp),
            max_len=np.array([r.max_length for r in requests], dtype=np.intp),
            num=np.array([r.num_captions for r in requests], dtype=np.intp),
            alpha=np.array([r.length_penalty for r in requests], dtype=np.float64),
            nth_best=np.full(len(requests), -np.inf),
            finished=[[] for _ in requests],
        )

    def add(self, item: int, hypothesis: Hypothesis) -> None:
        hyps = self.finished[item]
        hyps.append(hypothesis)
        n = int(self.num[item])
        if len(hyps) >= n:
            self.nth_best[item] = sorted((h.score for h in hyps), reverse=True)[n - 1]


def decode_batch(
    step: StepFn,
    image: NDArray[np.float32],
    state_sizes: Sequence[int],
    requests: Sequence[DecodeRequest],
    *,
    start_id: int,
    end_id: int,
) -> list[list[Hypothesis]]:
    """Decode ``len(requests)`` images together; ``image[i]`` are the features of item i.

    Returns, per item, its ``num_captions`` best hypotheses, best first.
    """
    count = len(requests)
    if image.shape[0] != count:
        raise ValueError(f"{image.shape[0]} images but {count} requests")
    if count == 0:
        return []
    items = _Items.of(requests)
    rows = _Rows(
        item=np.arange(count, dtype=np.intp),
        tokens=np.zeros((count, 0), dtype=np.int32),
        logprob=np.zeros(count, dtype=np.float64),
        states=[np.zeros((count, size), dtype=np.float32) for size in state_sizes],
        attention=None,
    )
    last = np.full(count, start_id, dtype=np.int32)
    row_image = image
    t = 0
    while len(rows.item):
        t += 1
        out = step(last, rows.states, row_image)
        logprobs = np.asarray(out.logprobs)
        if logprobs.shape[0] != len(rows.item):
            raise ValueError(f"step returned {logprobs.shape[0]} rows for {len(rows.item)}")

        greedy = items.beam[rows.item] == 1
        g_parent, g_token, g_logprob = _greedy_step(
            np.flatnonzero(greedy), rows, out, logprobs, items, t, end_id
        )
        b_parent, b_token, b_logprob = _beam_step(
            np.flatnonzero(~greedy), rows, out, logprobs, items, t, end_id
        )
        parent = np.concatenate([g_parent, b_parent])
        order = np.argsort(rows.item[parent], kind="stable")  # keep rows grouped by item
        parent = parent[order]
        token = np.concatenate([g_token, b_token])[order]
        logprob = np.concatenate([g_logprob, b_logprob])[order]
        if len(parent) != len(rows.item) or (parent != np.arange(len(parent))).any():
            row_image = image[rows.item[parent]]  # the batch changed shape: gather again
        rows = rows.select(parent, token, logprob, out)
        last = token

    return [
        sorted(hyps, key=lambda h: h.score, reverse=True)[:n]
        for hyps, n in zip(items.finished, items.num.tolist(), strict=True)
    ]


Selection = tuple[NDArray[np.intp], NDArray[np.int32], NDArray[np.float64]]


def _greedy_step(
    g_rows: NDArray[np.intp],
    rows: _Rows,
    out: StepOutput,
    logprobs: NDArray[np.floating],
    items: _Items,
    t: int,
    end_id: int,
) -> Selection:
    """Argmax for every greedy row; close rows that chose ``<end>`` or reached their limit."""
    tok = logprobs[g_rows].argmax(axis=1).astype(np.int32)
    lp = rows.logprob[g_rows] + logprobs[g_rows, tok]
    done = (tok == end_id) | (items.max_len[rows.item[g_rows]] <= t)
    for r, token, value in zip(g_rows[done], tok[done], lp[done], strict=True):
        item = int(rows.item[r])
        ended = int(token) == end_id
        seq = rows.tokens[r] if ended else np.append(rows.tokens[r], token)
        attention = _row_attention(rows, out, int(r), include_step=not ended)
        alpha = float(items.alpha[item])
        items.add(item, _hypothesis(seq, attention, value, ended=ended, alpha=alpha))
    keep = ~done
    return g_rows[keep], tok[keep], lp[keep]


def _row_attention(
    rows: _Rows, out: StepOutput, r: int, *, include_step: bool
) -> NDArray[np.float32] | None:
    if out.attention is None:
        return None
    history = rows.attention[r] if rows.attention is not None else None
    if not include_step:
        return history if history is not None else np.zeros((0, out.attention.shape[1]), np.float32)
    now = np.asarray(out.attention[r], dtype=np.float32)[None, :]
    return now if history is None else np.concatenate([history, now], axis=0)


def _beam_step(
    b_rows: NDArray[np.intp],
    rows: _Rows,
    out: StepOutput,
    logprobs: NDArray[np.floating],
    items: _Items,
    t: int,
    end_id: int,
) -> Selection:
    """One beam-search step for every beam item at once (vectorised over items).

    Each item's live beams (at most K) are laid out in a padded (items, K * 2K) matrix of
    cumulative log-probabilities; the best 2K expansions of each item are ranked, an ``<end>``
    among an item's top ``beam_size`` closes a hypothesis, the first ``beam_size`` other
    expansions become its next beams.
    """
    if len(b_rows) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.int32), np.zeros(0, np.float64)
    vocab = int(logprobs.shape[1])
    row_items = rows.item[b_rows]  # ascending: rows are kept grouped by item
    uniq, first, counts = np.unique(row_items, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(uniq)), counts)
    slot = np.arange(len(b_rows)) - first[group]
    k = items.beam[uniq]
    widest = int(k.max())

    # Each row's best 2K tokens hold every expansion its item can keep: select them first
    # (argpartition on float32, no copy of the full (rows, V) matrix), then rank per item.
    per_row = min(2 * widest, vocab)
    row_logprobs = logprobs if len(b_rows) == len(logprobs) else logprobs[b_rows]
    row_top = np.argpartition(row_logprobs, vocab - per_row, axis=1)[:, vocab - per_row :]
    row_values = rows.logprob[b_rows, None] + np.take_along_axis(row_logprobs, row_top, axis=1)

    cumulative = np.full((len(uniq), widest, per_row), -np.inf)
    cumulative[group, slot] = row_values
    tokens_at = np.zeros((len(uniq), widest, per_row), dtype=np.intp)
    tokens_at[group, slot] = row_top
    flat = cumulative.reshape(len(uniq), widest * per_row)
    width = min(2 * widest, flat.shape[1])
    top = np.argpartition(-flat, width - 1, axis=1)[:, :width]
    values = np.take_along_axis(flat, top, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    token = np.take_along_axis(tokens_at.reshape(len(uniq), -1), top, axis=1)
    src_slot = top // per_row
    valid = np.isfinite(values)
    src_slot = np.where(valid, src_slot, 0)
    parent = b_rows[first[:, None] + src_slot]

    k_col = k[:, None]
    is_end = token == end_id
    closes = valid & is_end & (np.arange(width)[None, :] < k_col)
    grows = valid & ~is_end
    keep = grows & (np.cumsum(grows, axis=1) <= k_col)

    for g, j in zip(*np.nonzero(closes), strict=True):
        item, row = int(uniq[g]), int(parent[g, j])
        attention = _row_attention(rows, out, row, include_step=False)
        hyp = _hypothesis(
            rows.tokens[row], attention, values[g, j], ended=True, alpha=float(items.alpha[item])
        )
        items.add(item, hyp)

    max_len = items.max_len[uniq]
    at_limit = max_len <= t
    for g, j in zip(*np.nonzero(keep & at_limit[:, None]), strict=True):
        item, row = int(uniq[g]), int(parent[g, j])
        seq = np.append(rows.tokens[row], token[g, j])
        attention = _row_attention(rows, out, row, include_step=True)
        hyp = _hypothesis(seq, attention, values[g, j], ended=False, alpha=float(items.alpha[item]))
        items.add(item, hyp)

    # A live beam's log-probability only falls, so its best reachable score is its current
    # log-probability over the most favourable length still possible.
    alpha = items.alpha[uniq][:, None]
    reachable = np.maximum(
        values / np.power(float(t + 1), alpha), values / np.power(max_len[:, None], alpha)
    )
    best_live = np.where(keep, reachable, -np.inf).max(axis=1)
    hopeless = best_live <= items.nth_best[uniq]
    keep &= ~(at_limit | hopeless)[:, None]
    return parent[keep], token[keep].astype(np.int32), values[keep]
