"""Build the caption vocabulary from training captions and turn captions into padded id arrays."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from service.vocabulary import SPECIALS, Vocabulary


def build_vocabulary(
    captions_by_image: Mapping[str, Sequence[str]],
    images: Iterable[str],
    min_count: int = 5,
) -> Vocabulary:
    """Words seen at least ``min_count`` times in the captions of ``images`` (pass TRAIN only).

    Order: the specials ``<pad> <start> <end> <unk>`` (ids 0-3), then words by count
    descending, ties broken alphabetically, so the same data always gives the same ids.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts: Counter[str] = Counter()
    for image in images:
        for caption in captions_by_image.get(image, ()):
            counts.update(caption.split())
    for special in SPECIALS:
        counts.pop(special, None)
    kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return Vocabulary(tokens=(*SPECIALS, *kept), min_count=min_count)


def encode_captions(vocab: Vocabulary, captions: Sequence[str], max_length: int) -> np.ndarray:
    """``<start> words <end>`` ids, right-padded with ``<pad>``: int32 (N, max_length).

    Captions longer than ``max_length - 2`` words are cut; ``<end>`` is always kept last.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (start, a word, end), got {max_length}")
    out = np.full((len(captions), max_length), vocab.pad_id, dtype=np.int32)
    for row, caption in enumerate(captions):
        ids = vocab.encode(caption.split())[: max_length - 2]
        seq = [vocab.start_id, *ids, vocab.end_id]
        out[row, : len(seq)] = seq
    return out
