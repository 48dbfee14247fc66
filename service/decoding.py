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


def _best_reachable(logprob: float, steps: int, max_length: int, alpha: float) -> float:
    """Upper bound of the score of any continuation of a live beam (logprob <= 0 only falls)."""
    return max(_score(logprob, s, alpha) for s in (steps + 1, max_length))


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
    beam = np.array([r.beam_size for r in requests], dtype=np.intp)
    max_len = np.array([r.max_length for r in requests], dtype=np.intp)
    finished: list[list[Hypothesis]] = [[] for _ in range(count)]

    rows = _Rows(
        item=np.arange(count, dtype=np.intp),
        tokens=np.zeros((count, 0), dtype=np.int32),
        logprob=np.zeros(count, dtype=np.float64),
        states=[np.zeros((count, size), dtype=np.float32) for size in state_sizes],
        attention=None,
    )
    last = np.full(count, start_id, dtype=np.int32)
    t = 0
    while len(rows.item):
        t += 1
        out = step(last, rows.states, image[rows.item])
        logprobs = np.asarray(out.logprobs, dtype=np.float64)
        if logprobs.shape[0] != len(rows.item):
            raise ValueError(f"step returned {logprobs.shape[0]} rows for {len(rows.item)}")

        parents: list[NDArray[np.intp]] = []
        tokens: list[NDArray[np.int32]] = []
        scores: list[NDArray[np.float64]] = []

        greedy = beam[rows.item] == 1
        if greedy.any():
            g_rows = np.flatnonzero(greedy)
            g_tok = logprobs[g_rows].argmax(axis=1)
            g_lp = rows.logprob[g_rows] + logprobs[g_rows, g_tok]
            done = (g_tok == end_id) | (max_len[rows.item[g_rows]] <= t)
            for r, tok, lp in zip(g_rows[done], g_tok[done], g_lp[done], strict=True):
                item = int(rows.item[r])
                ended = int(tok) == end_id
                seq = rows.tokens[r] if ended else np.append(rows.tokens[r], tok)
                attention = _row_attention(rows, out, r, include_step=not ended)
                alpha = requests[item].length_penalty
                finished[item].append(_hypothesis(seq, attention, lp, ended=ended, alpha=alpha))
            keep = ~done
            parents.append(g_rows[keep])
            tokens.append(g_tok[keep].astype(np.int32))
            scores.append(g_lp[keep])

        for item in np.unique(rows.item[~greedy]):
            item_rows = np.flatnonzero(rows.item == item)
            p, tok, lp = _beam_step(
                int(item), item_rows, rows, out, logprobs, requests[int(item)], t, finished, end_id
            )
            parents.append(p)
            tokens.append(tok)
            scores.append(lp)

        parent = np.concatenate(parents) if parents else np.zeros(0, dtype=np.intp)
        order = np.argsort(rows.item[parent], kind="stable")  # keep rows grouped by item
        parent = parent[order]
        token = np.concatenate(tokens)[order].astype(np.int32)
        logprob = np.concatenate(scores)[order]
        rows = rows.select(parent, token, logprob, out)
        last = token

    return [
        sorted(hyps, key=lambda h: h.score, reverse=True)[: req.num_captions]
        for hyps, req in zip(finished, requests, strict=True)
    ]


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
    item: int,
    item_rows: NDArray[np.intp],
    rows: _Rows,
    out: StepOutput,
    logprobs: NDArray[np.float64],
    request: DecodeRequest,
    t: int,
    finished: list[list[Hypothesis]],
    end_id: int,
) -> tuple[NDArray[np.intp], NDArray[np.int32], NDArray[np.float64]]:
    """Expand one beam-search item by a token; return the surviving (parent, token, logprob)."""
    k = request.beam_size
    alpha = request.length_penalty
    vocab = logprobs.shape[1]
    candidates = (rows.logprob[item_rows, None] + logprobs[item_rows]).ravel()
    n = min(2 * k, candidates.size)
    top = np.argpartition(-candidates, n - 1)[:n]
    top = top[np.argsort(-candidates[top], kind="stable")]

    parent: list[int] = []
    token: list[int] = []
    logprob: list[float] = []
    for rank, flat in enumerate(top):
        r, tok = divmod(int(flat), vocab)
        row = int(item_rows[r])
        lp = float(candidates[flat])
        if tok == end_id:
            if rank < k:
                attention = _row_attention(rows, out, row, include_step=False)
                finished[item].append(
                    _hypothesis(rows.tokens[row], attention, lp, ended=True, alpha=alpha)
                )
            continue
        parent.append(row)
        token.append(tok)
        logprob.append(lp)
        if len(parent) == k:
            break

    hyps = finished[item]
    if t >= request.max_length:
        for row, tok, lp in zip(parent, token, logprob, strict=True):
            seq = np.append(rows.tokens[row], tok)
            attention = _row_attention(rows, out, row, include_step=True)
            hyps.append(_hypothesis(seq, attention, lp, ended=False, alpha=alpha))
        parent, token, logprob = [], [], []
    elif len(hyps) >= request.num_captions and parent:
        worst_kept = sorted((h.score for h in hyps), reverse=True)[request.num_captions - 1]
        best_live = max(_best_reachable(lp, t, request.max_length, alpha) for lp in logprob)
        if best_live <= worst_kept:
            parent, token, logprob = [], [], []
    return (
        np.asarray(parent, dtype=np.intp),
        np.asarray(token, dtype=np.int32),
        np.asarray(logprob, dtype=np.float64),
    )
