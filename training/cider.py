"""CIDEr-D of single captions, fast enough to be the reward of self-critical (SCST) training.

``CiderD`` holds the document frequencies of a reference corpus (in how many images' reference
sets each 1..n-gram occurs) and ``log`` of its number of images, both computed once at
construction: SCST scores against the train references only, so the idf never sees the
evaluation set. It then scores one tokenised candidate caption at a time:

* ``score(candidate, references)``: against any list of references (vectors built on each call);
* ``score_image(candidate, image)``: against ``references[image]`` of the corpus, whose tf-idf
  vectors, norms and lengths are built on first use (a few tenths of a millisecond) and cached;
* ``score_batch(candidates, images)``: ``score_image`` over a batch, as a float64 array.

The arithmetic is that of coco-caption's ``CiderScorer`` (pycocoevalcap), equal to rounding:

* a caption's n-grams are counted with their term frequency (a repeated n-gram counts twice);
* weight of an n-gram = ``tf * (log(N_images) - log(max(1, df)))``, one vector per order;
* per order and reference: ``sum(min(hyp, ref) * ref) / (|hyp| * |ref|)`` over the candidate's
  n-grams (left undivided, i.e. 0, when a norm is 0);
* times the length penalty ``exp(-(len_hyp - len_ref)^2 / (2 sigma^2))``, where pycocoevalcap's
  "length" is a caption's number of bigrams (``max(words - 1, 0)``): the same difference as word
  counts except for empty and one-word captions;
* averaged over the n orders and over the references, times 10.

pycocoevalcap always counts 1..4-grams; ``n`` other than 4 is this module's extension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Gram = tuple[str, ...]
OrderCounts = list[dict[Gram, int]]
"""Term frequency of each n-gram of a caption, one dict per order (index 0: unigrams)."""


def ngram_counts(words: Sequence[str], n: int) -> OrderCounts:
    """Term frequencies of the 1..n-grams of ``words``, in pycocoevalcap's insertion order."""
    # A tuple: slicing it gives hashable n-grams with no per-gram list copy.
    tokens = tuple(words)
    counts: OrderCounts = []
    for k in range(1, n + 1):
        order: dict[Gram, int] = {}
        for i in range(len(tokens) - k + 1):
            gram = tokens[i : i + k]
            order[gram] = order.get(gram, 0) + 1
        counts.append(order)
    return counts


def caption_length(words: Sequence[str]) -> int:
    """pycocoevalcap's length of a caption: its number of bigrams, not of words."""
    return max(len(words) - 1, 0)


@dataclass(frozen=True)
class _ReferenceSet:
    """The tf-idf vectors of one image's references, merged for a single lookup per n-gram."""

    weights: list[dict[Gram, tuple[float, tuple[tuple[int, float], ...]]]]
    """Per order: n-gram -> (idf, ((reference index, tf-idf weight), ...)) over the references
    holding it."""
    norms: tuple[tuple[float, ...], ...]
    """``norms[j][k]``: norm of reference j's order-k vector."""
    lengths: tuple[int, ...]


class CiderD:
    """CIDEr-D with the document frequencies of a fixed reference corpus.

    ``references[i]`` is the list of reference captions of image i, each a list of word tokens.
    """

    def __init__(
        self, references: Sequence[Sequence[Sequence[str]]], n: int = 4, sigma: float = 6.0
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if not references:
            raise ValueError("no reference images to compute document frequencies from")
        self.n = n
        self.sigma = sigma
        self._two_sigma_squared = 2.0 * sigma * sigma
        self._references = [[tuple(ref) for ref in refs] for refs in references]
        self._log_images = math.log(float(len(self._references)))
        self._document_frequency = _document_frequency(self._references, n)
        # idf per corpus n-gram, computed once; an n-gram absent from the corpus gets log(N).
        self._idf = {
            gram: self._log_images - math.log(max(1.0, float(df)))
            for gram, df in self._document_frequency.items()
        }
        self._cache: list[_ReferenceSet | None] = [None] * len(self._references)

    @property
    def num_images(self) -> int:
        return len(self._references)

    def document_frequency(self, gram: Sequence[str]) -> int:
        """In how many of the corpus images' reference sets the n-gram occurs."""
        return self._document_frequency.get(tuple(gram), 0)

    def score(self, candidate: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        """CIDEr-D of one candidate against the given references, with the corpus idf."""
        return self._score(candidate, self._reference_set(references))

    def score_image(self, candidate: Sequence[str], image: int) -> float:
        """CIDEr-D of one candidate against the corpus references of image ``image``."""
        cached = self._cache[image]
        if cached is None:
            cached = self._cache[image] = self._reference_set(self._references[image])
        return self._score(candidate, cached)

    def score_batch(
        self, candidates: Sequence[Sequence[str]], images: Sequence[int]
    ) -> NDArray[np.float64]:
        """``score_image`` of each (candidate, image) pair."""
        if len(candidates) != len(images):
            raise ValueError(f"{len(candidates)} candidates for {len(images)} images")
        scores = [self.score_image(c, i) for c, i in zip(candidates, images, strict=True)]
        return np.array(scores, dtype=np.float64)

    def _idf_of(self, gram: Gram) -> float:
        """``log(N) - log(max(1, df))``; ``log(N)`` for an n-gram the corpus lacks (df 0)."""
        return self._idf.get(gram, self._log_images)

    def _reference_set(self, references: Sequence[Sequence[str]]) -> _ReferenceSet:
        if not references:
            raise ValueError("a candidate needs at least one reference caption")
        holders: list[dict[Gram, list[tuple[int, float]]]] = [{} for _ in range(self.n)]
        norms = []
        for j, ref in enumerate(references):
            squares = [0.0] * self.n
            for k, order in enumerate(ngram_counts(ref, self.n)):
                for gram, tf in order.items():
                    value = tf * self._idf_of(gram)
                    squares[k] += value * value
                    # A zero weight (df = N) adds nothing to any numerator: not stored.
                    if value:
                        holders[k].setdefault(gram, []).append((j, value))
            norms.append(tuple(math.sqrt(s) for s in squares))
        weights = [
            {gram: (self._idf_of(gram), tuple(row)) for gram, row in order.items()}
            for order in holders
        ]
        lengths = tuple(caption_length(ref) for ref in references)
        return _ReferenceSet(weights=weights, norms=tuple(norms), lengths=lengths)

    def _score(self, candidate: Sequence[str], refs: _ReferenceSet) -> float:
        # Locals and one dict lookup per matched n-gram: ~30,000 captions per SCST epoch.
        idf, unseen = self._idf, self._log_images
        count = len(refs.lengths)
        # numerators[k][j]: sum of min(hyp, ref) * ref over the candidate's order-k n-grams.
        numerators = []
        hyp_norms = []
        for k, order in enumerate(ngram_counts(candidate, self.n)):
            table = refs.weights[k]
            row = [0.0] * count
            squares = 0.0
            for gram, tf in order.items():
                entry = table.get(gram)
                if entry is None:
                    value = tf * idf.get(gram, unseen)
                    squares += value * value
                    continue
                value = tf * entry[0]
                squares += value * value
                for j, ref_value in entry[1]:
                    row[j] += (value if value < ref_value else ref_value) * ref_value
            numerators.append(row)
            hyp_norms.append(math.sqrt(squares))
        return self._combine(numerators, hyp_norms, refs, caption_length(candidate))

    def _combine(
        self,
        numerators: list[list[float]],
        hyp_norms: list[float],
        refs: _ReferenceSet,
        length: int,
    ) -> float:
        """Cosine per order and reference, length penalty, mean over orders and references."""
        total = 0.0
        for j, ref_norms in enumerate(refs.norms):
            similarity = 0.0
            for k, hyp_norm in enumerate(hyp_norms):
                numerator = numerators[k][j]
                # Divide only a nonzero numerator (its norms are then nonzero): pycocoevalcap
                # leaves an order with a zero norm at 0 rather than dividing by it.
                if numerator:
                    numerator /= hyp_norm * ref_norms[k]
                similarity += numerator
            delta = float(length - refs.lengths[j])
            total += similarity * math.exp(-(delta * delta) / self._two_sigma_squared)
        return total / self.n / len(refs.lengths) * 10.0


def _document_frequency(references: list[list[Gram]], n: int) -> dict[Gram, int]:
    """Number of images whose reference set contains each n-gram (once per image, not caption)."""
    frequency: dict[Gram, int] = {}
    for refs in references:
        grams = {gram for ref in refs for order in ngram_counts(ref, n) for gram in order}
        for gram in grams:
            frequency[gram] = frequency.get(gram, 0) + 1
    return frequency
