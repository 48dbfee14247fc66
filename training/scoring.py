"""Caption metrics: the COCO caption scorer (pycocoevalcap) plus NLTK corpus BLEU, and a bootstrap.

``score_captions`` returns, in [0, 1] (CIDEr-D may exceed 1):

* ``bleu_1`` .. ``bleu_4``, ``meteor``, ``rouge_l``, ``cider``: pycocoevalcap on PTB-tokenised,
  lower-cased text with punctuation removed, as the COCO caption leaderboard computes them
  (SPICE is left out: it downloads Stanford CoreNLP models at run time);
* ``nltk_bleu_1`` .. ``nltk_bleu_4``: NLTK ``corpus_bleu`` on the same tokens, unsmoothed, the
  number most Keras captioning tutorials report (close to ``bleu_4``, not identical).

The PTB tokeniser and METEOR are Java programs shipped inside pycocoevalcap; Java must be on the
PATH. The tokeniser is fed through stdin here (pycocoevalcap's own wrapper writes a temporary file
into its package folder, which fails on a read-only install).

``bootstrap_ci`` resamples images with replacement to put a confidence interval on corpus BLEU,
``paired_bootstrap`` does the same for the difference between two caption sets on the same
images: the per-image n-gram statistics are computed once, so 1,000 resamples of 1,000 images
take milliseconds.
"""

from __future__ import annotations

import math
import subprocess
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocoevalcap
from nltk.translate.bleu_score import corpus_bleu
from numpy.typing import NDArray
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

METRIC_KEYS = (
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "meteor",
    "rouge_l",
    "cider",
    "nltk_bleu_1",
    "nltk_bleu_2",
    "nltk_bleu_3",
    "nltk_bleu_4",
)

_PTB_JAR = Path(pycocoevalcap.__path__[0]) / "tokenizer" / "stanford-corenlp-3.4.1.jar"
_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--"]
    + ["...", ";"]
)

Tokenized = dict[str, list[str]]


def ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> Tokenized:
    """PTB-tokenise and lower-case every caption, dropping punctuation tokens (COCO's way)."""
    keys = [key for key, texts in captions.items() for _ in texts]
    lines = [" ".join(text.split()) for texts in captions.values() for text in texts]
    result: Tokenized = {key: [] for key in captions}
    if not lines:
        return result
    completed = subprocess.run(
        ["java", "-Dfile.encoding=UTF-8", "-cp", str(_PTB_JAR)]
        + ["edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed: {completed.stderr.strip()[-500:]}")
    out = completed.stdout.split("\n")
    if len(out) < len(lines):
        raise RuntimeError(f"PTB tokenizer returned {len(out)} lines for {len(lines)}")
    for key, line in zip(keys, out, strict=False):
        result[key].append(" ".join(w for w in line.split() if w not in _PUNCTUATION))
    return result


def _check_keys(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> None:
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    missing = [k for k in hypotheses if not references.get(k)]
    if missing:
        raise ValueError(f"{len(missing)} hypotheses without references, e.g. {missing[:3]}")


def tokenize_pair(
    references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]
) -> tuple[Tokenized, Tokenized]:
    """Tokenise references (restricted to the hypotheses' images) and hypotheses together."""
    _check_keys(references, hypotheses)
    keys = list(hypotheses)
    both = ptb_tokenize(
        {**{f"r{k}": references[k] for k in keys}, **{f"h{k}": [hypotheses[k]] for k in keys}}
    )
    return {k: both[f"r{k}"] for k in keys}, {k: both[f"h{k}"] for k in keys}


class CaptionScorer:
    """Scores caption sets; keeps the METEOR JVM (about 10 s to start) open between calls.

    Use as a context manager, or call ``close``; ``score_captions`` makes a one-off scorer.
    """

    def __init__(self) -> None:
        self._meteor: Meteor | None = None

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._meteor is None:
            return
        process = self._meteor.meteor_p
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        process.kill()
        process.wait()
        self._meteor = None

    def meteor(self, refs: Tokenized, hyps: Tokenized) -> float:
        if self._meteor is None:
            self._meteor = Meteor()
        score, _ = self._meteor.compute_score(refs, hyps)
        return float(score)

    def score_tokenized(self, refs: Tokenized, hyps: Tokenized) -> dict[str, float]:
        """All metrics on already tokenised text (``tokenize_pair``'s output)."""
        if set(refs) != set(hyps):
            raise ValueError("references and hypotheses must cover the same images")
        bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
        rouge, _ = Rouge().compute_score(refs, hyps)
        cider, _ = Cider().compute_score(refs, hyps)
        scores = {f"bleu_{n + 1}": float(bleu[n]) for n in range(4)}
        scores["meteor"] = self.meteor(refs, hyps)
        scores["rouge_l"] = float(rouge)
        scores["cider"] = float(cider)
        scores.update(nltk_bleu(refs, hyps))
        return scores

    def score(
        self, references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]
    ) -> dict[str, float]:
        """Tokenise, then ``score_tokenized``."""
        refs, hyps = tokenize_pair(references, hypotheses)
        return self.score_tokenized(refs, hyps)


def nltk_bleu(refs: Tokenized, hyps: Tokenized) -> dict[str, float]:
    """NLTK corpus BLEU-1..4 (uniform weights, no smoothing) on tokenised text."""
    keys = list(hyps)
    list_of_refs = [[r.split() for r in refs[k]] for k in keys]
    hyp_tokens = [hyps[k][0].split() for k in keys]
    scores = {}
    for n in range(1, 5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NLTK warns when an n-gram order has no match
            value = corpus_bleu(list_of_refs, hyp_tokens, weights=(1.0 / n,) * n)
        scores[f"nltk_bleu_{n}"] = float(value)
    return scores


def score_captions(
    references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]
) -> dict[str, float]:
    """Score one caption per image against its references; keys are ``METRIC_KEYS``.

    ``references`` may hold more images than ``hypotheses``; only hypothesised images count.
    """
    with CaptionScorer() as scorer:
        return scorer.score(references, hypotheses)


# --- bootstrap --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    metric: str
    value: float
    """The metric on the full set."""
    low: float
    high: float
    confidence: float
    samples: int


def bleu_statistics(refs: Tokenized, hyps: Tokenized, max_n: int = 4) -> NDArray[np.float64]:
    """Per image: [correct_1..n, guessed_1..n, hypothesis length, closest reference length]."""
    rows = []
    for key, [hyp] in hyps.items():
        words = hyp.split()
        ref_words = [r.split() for r in refs[key]]
        row = []
        guesses = []
        for n in range(1, max_n + 1):
            counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
            best: Counter[tuple[str, ...]] = Counter()
            for ref in ref_words:
                best |= Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            row.append(sum(min(c, best[g]) for g, c in counts.items()))
            guesses.append(max(len(words) - n + 1, 0))
        closest = min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        rows.append(row + guesses + [len(words), closest])
    return np.asarray(rows, dtype=np.float64)


def corpus_bleu_from_statistics(stats: NDArray[np.float64], n: int = 4) -> NDArray[np.float64]:
    """Corpus BLEU-n from summed statistics (..., 2 * max_n + 2), pycocoevalcap's formula."""
    max_n = (stats.shape[-1] - 2) // 2
    tiny, small = 1e-15, 1e-9
    log_p = np.zeros(stats.shape[:-1])
    for k in range(n):
        log_p += np.log((stats[..., k] + tiny) / (stats[..., max_n + k] + small))
    bleu = np.exp(log_p / n)
    ratio = (stats[..., -2] + tiny) / (stats[..., -1] + small)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
    result: NDArray[np.float64] = bleu * penalty
    return result


def bootstrap_ci(
    refs: Tokenized,
    hyps: Tokenized,
    *,
    n: int = 4,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap over images for corpus BLEU-n on tokenised text."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    stats = bleu_statistics(refs, hyps, max_n=n)
    rng = np.random.default_rng(seed)
    images = len(stats)
    weights = rng.multinomial(images, np.full(images, 1.0 / images), size=samples)
    values = corpus_bleu_from_statistics(weights.astype(np.float64) @ stats, n)
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    point = float(corpus_bleu_from_statistics(stats.sum(axis=0), n))
    return Interval(
        metric=f"bleu_{n}",
        value=point,
        low=float(low),
        high=float(high),
        confidence=confidence,
        samples=samples,
    )


@dataclass(frozen=True)
class PairedComparison:
    """Corpus BLEU of two caption sets on the same images, and their bootstrap difference."""

    metric: str
    a: float
    b: float
    difference: float
    """``b - a`` on the full set."""
    low: float
    high: float
    """Percentile interval of ``b - a`` over image resamples."""
    b_better: float
    """Share of resamples in which ``b`` scores higher than ``a``."""
    confidence: float
    samples: int


def paired_bootstrap(
    refs: Tokenized,
    hyps_a: Tokenized,
    hyps_b: Tokenized,
    *,
    n: int = 4,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap of corpus BLEU-n: both sets are scored on the same resampled images.

    Pairing removes the between-image variance that dominates ``bootstrap_ci``'s interval, so
    it can tell two settings apart (say beam 1 and beam 3) where separate intervals overlap.
    """
    if set(hyps_a) != set(hyps_b):
        raise ValueError("both caption sets must cover the same images")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    keys = list(hyps_a)
    stats_a = bleu_statistics(refs, hyps_a, max_n=n)
    stats_b = bleu_statistics(refs, {k: hyps_b[k] for k in keys}, max_n=n)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(keys), np.full(len(keys), 1.0 / len(keys)), size=samples)
    weights_f = weights.astype(np.float64)
    values_a = corpus_bleu_from_statistics(weights_f @ stats_a, n)
    values_b = corpus_bleu_from_statistics(weights_f @ stats_b, n)
    tail = (1 - confidence) / 2
    low, high = np.quantile(values_b - values_a, [tail, 1 - tail])
    a = float(corpus_bleu_from_statistics(stats_a.sum(axis=0), n))
    b = float(corpus_bleu_from_statistics(stats_b.sum(axis=0), n))
    return PairedComparison(
        metric=f"bleu_{n}",
        a=a,
        b=b,
        difference=b - a,
        low=float(low),
        high=float(high),
        b_better=float(np.mean(values_b > values_a)),
        confidence=confidence,
        samples=samples,
    )


def is_valid_score(name: str, value: float) -> bool:
    """True when ``value`` is in the metric's range ([0, 1]; CIDEr-D in [0, 10])."""
    upper = 10.0 if name == "cider" else 1.0
    return math.isfinite(value) and 0.0 <= value <= upper
