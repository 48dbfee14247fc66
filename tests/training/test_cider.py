"""CIDEr-D: a hand-computed value, agreement with pycocoevalcap, and the rewards SCST relies on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from training.cider import CiderD, caption_length, ngram_counts

# Three images; "a" is in every image's references, "sits" in two, everything else in one.
TINY = [
    ["a dog runs".split(), "a dog sits".split()],
    ["a cat sits".split()],
    ["a bird flies".split()],
]

DOGS = [
    [
        "a black dog runs across the grass".split(),
        "a dog runs on the grass".split(),
        "a black dog is running outside".split(),
        "the dog runs through a field".split(),
        "a dog running on green grass".split(),
    ],
    [
        "a man in a blue shirt rides a bike".split(),
        "a man rides his bike down the street".split(),
        "a cyclist in blue on a city street".split(),
    ],
    [
        "two children play in the water".split(),
        "two kids splash in a pool".split(),
        "children playing in the water".split(),
    ],
]


def test_hand_computed_value() -> None:
    scorer = CiderD(TINY)
    # N = 3 images. idf = log(3) - log(df): "a" (df 3) -> 0; "sits" (df 2) -> log(3/2) =: M;
    # every other n-gram (df 1) -> log(3) =: L. No caption has a 4-gram.
    L, M = math.log(3), math.log(1.5)
    assert scorer.document_frequency(["a"]) == 3
    assert scorer.document_frequency(["sits"]) == 2
    assert scorer.document_frequency(["a", "dog"]) == 1

    # Candidate "a dog sits" against image 0's references A = "a dog runs", B = "a dog sits".
    # Unigrams: hyp {a: 0, dog: L, sits: M}, |hyp| = sqrt(L^2 + M^2);
    #   A {a: 0, dog: L, runs: L}, |A| = sqrt(2) L: sum min*ref = L*L -> L / (sqrt(2) |hyp|);
    #   B = hyp -> 1.
    # Bigrams: hyp {a dog: L, dog sits: L}; A {a dog: L, dog runs: L} -> L^2 / (2 L^2) = 1/2;
    #   B = hyp -> 1.
    # Trigrams: A shares none -> 0; B = hyp -> 1. 4-grams: none -> 0 for both.
    # Equal lengths -> no penalty. Sum over (A, B) and orders: L / (sqrt(2) |hyp|) + 1 + 1.5 + 1;
    # mean over 4 orders and 2 references, times 10: 10 / 8 * (3.5 + 0.663369...) = 5.204211...
    by_hand = 10 / 8 * (3.5 + L / (math.sqrt(2) * math.sqrt(L * L + M * M)))
    assert by_hand == pytest.approx(5.204211, abs=1e-6)
    assert scorer.score_image("a dog sits".split(), 0) == pytest.approx(by_hand, abs=1e-12)

    # Candidate "a dog": unigrams {a: 0, dog: L}, |hyp| = L: A -> L^2 / (L sqrt(2) L) = 1/sqrt(2),
    # B -> L^2 / (L sqrt(L^2 + M^2)); bigrams {a dog: L}: A and B -> L^2 / (L sqrt(2) L) each.
    # Length (in bigrams) 1 against 2: penalty exp(-1 / (2 * 6^2)) = exp(-1/72) on every term.
    by_hand = 10 / 8 * math.exp(-1 / 72) * (3 / math.sqrt(2) + L / math.sqrt(L * L + M * M))
    assert by_hand == pytest.approx(3.771584, abs=1e-6)
    assert scorer.score_image("a dog".split(), 0) == pytest.approx(by_hand, abs=1e-12)


def test_identical_caption_without_4grams() -> None:
    # Orders 1-3 have cosine 1, order 4 is empty (0): mean 3/4, times 10.
    assert CiderD(TINY).score_image("a cat sits".split(), 1) == pytest.approx(7.5, abs=1e-12)


def test_ngram_counts_and_length() -> None:
    counts = ngram_counts("a dog a dog".split(), 4)
    assert counts[0] == {("a",): 2, ("dog",): 2}
    assert counts[1] == {("a", "dog"): 2, ("dog", "a"): 1}
    assert counts[3] == {("a", "dog", "a", "dog"): 1}
    assert [caption_length(w.split()) for w in ("", "dog", "a dog runs")] == [0, 0, 2]


def test_document_frequency_counts_images_not_captions() -> None:
    scorer = CiderD(DOGS)
    assert scorer.num_images == 3
    assert scorer.document_frequency(["dog"]) == 1  # in 5 captions of one image
    assert scorer.document_frequency(["in"]) == 2
    assert scorer.document_frequency(["zebra"]) == 0


def _flickr_fixture(flickr8k_dir: Path) -> tuple[list[list[str]], list[str]]:
    """20 images' references and varied hypotheses: exact, truncated, another image's, reversed,
    repeated, one word, unseen words."""
    from training.data import load_captions

    captions = load_captions(flickr8k_dir)
    refs = [captions[name] for name in sorted(captions)[:21]]
    hyps = []
    for i in range(20):
        own = refs[i]
        variants = [
            own[0],
            " ".join(own[1].split()[:4]),
            refs[i + 1][0],
            " ".join(reversed(own[2].split())),
            " ".join(own[3].split()[:3] * 3),
            own[4].split()[1],
            f"{own[0]} zebra quokka",
        ]
        hyps.append(variants[i % len(variants)])
    return refs[:20], hyps


def test_agrees_with_pycocoevalcap(flickr8k_dir: Path) -> None:
    refs, hyps = _flickr_fixture(flickr8k_dir)
    gts = {str(i): list(r) for i, r in enumerate(refs)}
    res = {str(i): [h] for i, h in enumerate(hyps)}
    mean, expected = Cider().compute_score(gts, res)

    scorer = CiderD([[c.split() for c in r] for r in refs])
    tokens = [h.split() for h in hyps]
    got = scorer.score_batch(tokens, list(range(20)))
    assert len(set(np.round(expected, 6))) > 10  # a varied set of scores, not all 0 or equal
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert float(got.mean()) == pytest.approx(mean, abs=1e-9)
    for i, h in enumerate(tokens):
        assert scorer.score(h, [c.split() for c in refs[i]]) == pytest.approx(expected[i], abs=1e-9)


def test_exact_beats_shuffled_truncated_and_repeated() -> None:
    scorer = CiderD(DOGS)
    exact = scorer.score_image("a dog runs on the grass".split(), 0)
    shuffled = scorer.score_image("grass the on runs dog a".split(), 0)
    truncated = scorer.score_image("a dog runs on".split(), 0)
    assert exact > truncated > 0
    assert exact > shuffled > 0
    plain = scorer.score_image("a dog runs".split(), 0)
    repeated = scorer.score_image("a dog runs a dog runs a dog runs".split(), 0)
    assert 0 < repeated < plain
    assert scorer.score_image("a dog runs".split(), 1) < plain  # wrong image


def test_batch_equals_single_scores() -> None:
    scorer = CiderD(DOGS)
    candidates = [
        "a dog runs on the grass".split(),
        "a man rides a bike".split(),
        "children in the water".split(),
        "a dog runs".split(),
        [],
    ]
    images = [0, 1, 2, 1, 2]
    batch = scorer.score_batch(candidates, images)
    assert batch.dtype == np.float64
    assert batch.shape == (5,)
    pairs = list(zip(candidates, images, strict=True))
    assert batch.tolist() == [scorer.score_image(c, i) for c, i in pairs]
    assert batch.tolist() == [scorer.score(c, DOGS[i]) for c, i in pairs]
    assert batch[-1] == 0.0


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no reference images"):
        CiderD([])
    with pytest.raises(ValueError, match="at least one reference"):
        CiderD([[]]).score_image(["dog"], 0)
    with pytest.raises(ValueError, match="2 candidates for 1 images"):
        CiderD(DOGS).score_batch([["a"], ["b"]], [0])
