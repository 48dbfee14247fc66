"""Batched greedy and beam search over small deterministic numpy step functions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from service.decoding import DecodeRequest, Hypothesis, StepOutput, decode_batch

START, END = 1, 2


class TableStep:
    """A Markov model: next-token log-probs from a table indexed by (image id, previous token).

    ``image[:, 0]`` holds the image id. State 0 counts steps and pushes ``<end>`` up as the caption
    grows (so states must be carried correctly); state 1 is carried through unchanged. The attention
    output is the one-hot of the previous token, so a hypothesis' attention can be checked.
    """

    def __init__(self, table: NDArray[np.float64], end_push: float = 0.0) -> None:
        self.table = table  # (images, V, V) logits
        self.end_push = end_push
        self.rows_per_call: list[int] = []

    def __call__(
        self,
        tokens: NDArray[np.int32],
        states: list[NDArray[np.float32]],
        image: NDArray[np.float32],
    ) -> StepOutput:
        self.rows_per_call.append(len(tokens))
        ids = image[:, 0].astype(np.int64)
        logits = self.table[ids, tokens].copy()
        logits[:, END] += self.end_push * states[0][:, 0]
        logprobs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        vocab = self.table.shape[1]
        return StepOutput(
            logprobs=logprobs.astype(np.float32),
            states=[states[0] + 1.0, states[1]],
            attention=np.eye(vocab, dtype=np.float32)[tokens],
        )


def random_table(images: int, vocab: int = 7, seed: int = 0) -> NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((images, vocab, vocab)) * 1.5
    table[:, :, [0, START]] = -50.0  # never <pad> or <start>
    table[:, :, END] -= 1.0
    return table


def features(images: int) -> NDArray[np.float32]:
    return np.arange(images, dtype=np.float32)[:, None]


def decode(
    step: TableStep, requests: Sequence[DecodeRequest], ids: Sequence[int] | None = None
) -> list[list[Hypothesis]]:
    image = features(len(requests)) if ids is None else np.asarray(ids, np.float32)[:, None]
    return decode_batch(step, image, [1, 2], requests, start_id=START, end_id=END)


def reference_greedy(
    table: NDArray[np.float64], image_id: int, max_length: int, push: float
) -> tuple[tuple[int, ...], float]:
    """Plain one-row greedy decoding written independently of the module."""
    token, logprob, out = START, 0.0, list[int]()
    for t in range(max_length):
        logits = table[image_id, token].copy()
        logits[END] += push * t
        logprobs = logits - np.logaddexp.reduce(logits)
        token = int(np.argmax(logprobs))
        logprob += float(np.float32(logprobs[token]))
        if token == END:
            return tuple(out), logprob
        out.append(token)
    return tuple(out), logprob


def reference_beam(
    table: NDArray[np.float64], image_id: int, request: DecodeRequest, push: float
) -> list[tuple[tuple[int, ...], float]]:
    """Textbook one-item beam search, loops only, with the module's documented rules."""
    k, alpha = request.beam_size, request.length_penalty
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    done: list[tuple[tuple[int, ...], float]] = []  # (tokens, score)
    for t in range(1, request.max_length + 1):
        candidates = []
        for tokens, logprob in beams:
            logits = table[image_id, tokens[-1] if tokens else START].copy()
            logits[END] += push * (t - 1)
            logprobs = (logits - np.logaddexp.reduce(logits)).astype(np.float32)
            candidates += [(logprob + float(lp), tokens, v) for v, lp in enumerate(logprobs)]
        candidates.sort(key=lambda c: -c[0])
        beams = []
        for rank, (logprob, tokens, v) in enumerate(candidates[: 2 * k]):
            if v == END:
                if rank < k:
                    done.append((tokens, logprob / (len(tokens) + 1) ** alpha))
            elif len(beams) < k:
                beams.append(((*tokens, v), logprob))
        if t == request.max_length:
            done += [(tokens, logprob / len(tokens) ** alpha) for tokens, logprob in beams]
            break
        if len(done) >= request.num_captions:
            nth = sorted((score for _, score in done), reverse=True)[request.num_captions - 1]
            reachable = max(lp / request.max_length**alpha for _, lp in beams)
            if reachable <= nth:
                break
    return sorted(done, key=lambda d: -d[1])[: request.num_captions]


def probs_table(rows: dict[int, dict[int, float]], vocab: int = 6) -> NDArray[np.float64]:
    table = np.full((1, vocab, vocab), -50.0)
    for prev, dist in rows.items():
        for tok, p in dist.items():
            table[0, prev, tok] = math.log(p)
    return table


def test_greedy_follows_the_hand_computed_path() -> None:
    # start -> 3 (0.5), 3 -> 4 (0.6), 4 -> <end> (0.7)
    table = probs_table(
        {START: {3: 0.5, 4: 0.3, 5: 0.2}, 3: {4: 0.6, END: 0.4}, 4: {END: 0.7, 5: 0.3}}
    )
    [[hyp]] = decode(TableStep(table), [DecodeRequest(max_length=10, length_penalty=0.0)])
    assert hyp.tokens == (3, 4)
    assert hyp.ended
    assert hyp.logprob == pytest.approx(math.log(0.5 * 0.6 * 0.7), abs=1e-5)
    assert hyp.score == pytest.approx(hyp.logprob)


def test_score_is_length_normalised() -> None:
    table = probs_table({START: {3: 0.5, END: 0.5}, 3: {4: 0.6, END: 0.4}, 4: {END: 1.0}})
    table[0, START, END] = -50.0
    [[hyp]] = decode(TableStep(table), [DecodeRequest(max_length=10, length_penalty=0.7)])
    assert hyp.tokens == (3, 4)
    assert hyp.score == pytest.approx(hyp.logprob / 3**0.7, abs=1e-5)  # 3 steps with <end>


def test_beam_finds_the_path_greedy_misses() -> None:
    # greedy takes 3 (0.5) then can only end badly; 4 (0.4) ends with 0.9.
    table = probs_table(
        {
            START: {3: 0.5, 4: 0.4, 5: 0.1},
            3: {END: 0.3, 3: 0.2, 4: 0.25, 5: 0.25},
            4: {END: 0.9, 5: 0.1},
        }
    )
    for alpha in (0.0, 0.7):
        [[greedy]] = decode(TableStep(table), [DecodeRequest(max_length=6, length_penalty=alpha)])
        [[beam]] = decode(
            TableStep(table), [DecodeRequest(beam_size=2, max_length=6, length_penalty=alpha)]
        )
        assert greedy.tokens == (3,)
        assert beam.tokens == (4,)
        assert beam.logprob == pytest.approx(math.log(0.4 * 0.9), abs=1e-5)
        assert beam.score > greedy.score


def test_greedy_matches_an_independent_reference_on_random_models() -> None:
    table = random_table(images=12, seed=1)
    requests = [DecodeRequest(max_length=9, length_penalty=0.0)] * 12
    results = decode(TableStep(table, end_push=0.4), requests)
    for image_id, [hyp] in enumerate(results):
        tokens, logprob = reference_greedy(table, image_id, 9, push=0.4)
        assert hyp.tokens == tokens
        assert hyp.logprob == pytest.approx(logprob, abs=1e-4)


def test_beam_score_is_never_below_greedy_on_random_models() -> None:
    table = random_table(images=30, seed=2)
    greedy = decode(TableStep(table, 0.3), [DecodeRequest(max_length=8)] * 30)
    beam = decode(TableStep(table, 0.3), [DecodeRequest(beam_size=4, max_length=8)] * 30)
    for [g], [b] in zip(greedy, beam, strict=True):
        assert b.score >= g.score - 1e-6


def test_beam_size_one_is_greedy() -> None:
    table = random_table(images=5, seed=3)
    greedy = decode(TableStep(table, 0.3), [DecodeRequest(max_length=8)] * 5)
    beam1 = decode(TableStep(table, 0.3), [DecodeRequest(beam_size=1, max_length=8)] * 5)
    assert [[h.tokens for h in r] for r in greedy] == [[h.tokens for h in r] for r in beam1]


def test_a_mixed_batch_equals_decoding_each_item_alone() -> None:
    table = random_table(images=6, seed=4)
    requests = [
        DecodeRequest(max_length=8),
        DecodeRequest(beam_size=3, num_captions=2, max_length=8),
        DecodeRequest(beam_size=2, max_length=5, length_penalty=0.0),
        DecodeRequest(max_length=3),
        DecodeRequest(beam_size=5, num_captions=5, max_length=10, length_penalty=1.0),
        DecodeRequest(beam_size=3, max_length=8),
    ]
    together = decode(TableStep(table, 0.3), requests)
    for i, request in enumerate(requests):
        [alone] = decode(TableStep(table, 0.3), [request], ids=[i])
        assert [(h.tokens, round(h.score, 5)) for h in together[i]] == [
            (h.tokens, round(h.score, 5)) for h in alone
        ]
        assert len(together[i]) == request.num_captions


def test_max_length_is_respected_when_end_never_comes() -> None:
    table = random_table(images=3, seed=5)
    table[:, :, END] = -50.0
    requests = [
        DecodeRequest(max_length=4),
        DecodeRequest(beam_size=3, num_captions=3, max_length=6),
        DecodeRequest(beam_size=2, max_length=1),
    ]
    step = TableStep(table)
    results = decode(step, requests)
    for request, hyps in zip(requests, results, strict=True):
        for hyp in hyps:
            assert len(hyp.tokens) == request.max_length
            assert not hyp.ended
    assert len(step.rows_per_call) == 6  # the longest request, one call per token


def test_the_batch_shrinks_as_captions_end() -> None:
    table = random_table(images=16, seed=6)
    step = TableStep(table, end_push=0.5)
    results = decode(step, [DecodeRequest(max_length=12)] * 16)
    assert step.rows_per_call[0] == 16
    assert step.rows_per_call == sorted(step.rows_per_call, reverse=True)
    longest = max(len(h.tokens) + int(h.ended) for [h] in results)
    assert len(step.rows_per_call) == longest


def test_n_best_lists_are_sorted_distinct_and_complete() -> None:
    table = random_table(images=8, seed=7)
    requests = [DecodeRequest(beam_size=5, num_captions=4, max_length=9)] * 8
    for hyps in decode(TableStep(table, 0.3), requests):
        assert len(hyps) == 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({h.tokens for h in hyps}) == 4
        assert all(START not in h.tokens and END not in h.tokens for h in hyps)


def test_attention_follows_each_generated_token() -> None:
    table = random_table(images=4, seed=8)
    requests = [
        DecodeRequest(max_length=7),
        DecodeRequest(beam_size=3, num_captions=3, max_length=7),
    ]
    for hyps in decode(TableStep(table, 0.3), requests):
        for hyp in hyps:
            assert hyp.attention is not None
            assert hyp.attention.shape == (len(hyp.tokens), table.shape[1])
            previous = (START, *hyp.tokens[:-1])
            assert tuple(int(a) for a in hyp.attention.argmax(axis=1)) == previous


def test_an_empty_batch_makes_no_calls() -> None:
    step = TableStep(random_table(images=1))
    assert decode(step, []) == []
    assert step.rows_per_call == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beam_size": 0, "max_length": 5},
        {"max_length": 0},
        {"beam_size": 2, "num_captions": 3, "max_length": 5},
        {"max_length": 5, "length_penalty": -1.0},
    ],
)
def test_impossible_requests_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DecodeRequest(**kwargs)  # type: ignore[arg-type]


def test_images_and_requests_must_match() -> None:
    with pytest.raises(ValueError, match="2 images but 1 requests"):
        decode_batch(
            TableStep(random_table(images=2)),
            features(2),
            [1, 2],
            [DecodeRequest(max_length=3)],
            start_id=START,
            end_id=END,
        )


@pytest.mark.parametrize(
    ("beam_size", "num_captions", "alpha"), [(2, 1, 0.0), (3, 2, 0.7), (5, 5, 1.0), (4, 1, 0.7)]
)
def test_beam_search_matches_an_independent_reference(
    beam_size: int, num_captions: int, alpha: float
) -> None:
    table = random_table(images=10, seed=10 + beam_size)
    request = DecodeRequest(
        beam_size=beam_size, num_captions=num_captions, max_length=8, length_penalty=alpha
    )
    results = decode(TableStep(table, end_push=0.3), [request] * 10)
    for image_id, hyps in enumerate(results):
        expected = reference_beam(table, image_id, request, push=0.3)
        assert [h.tokens for h in hyps] == [tokens for tokens, _ in expected]
        assert [h.score for h in hyps] == pytest.approx([score for _, score in expected], abs=1e-5)
