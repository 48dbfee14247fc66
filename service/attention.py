"""Per-word attention maps in caption responses (``attention=true``, attention decoders only).

The decoder returns, for every generated token, its weights over the N cells of the encoder's
grid (row-major, N = 7 x 7 for EfficientNet-Lite0 at 224 px). The response keeps one row per
word of ``text`` (special tokens such as ``<unk>`` are not words and are dropped, so ``words``,
``attention`` and ``text.split()`` line up) and states the grid's shape as ``attention_grid``.
"""

from __future__ import annotations

import math
from typing import Any

from service.model import Caption
from service.vocabulary import SPECIALS

DIGITS = 4
"""Weights are rounded to this many decimals (a row of N weights still sums to 1 within
N x 5e-5, 2.5e-3 for 7 x 7; in practice about 3e-4)."""


def grid_shape(cells: int) -> list[int]:
    """[rows, cols] of a grid of ``cells`` cells: square when it can be, else one row."""
    side = math.isqrt(cells)
    return [side, side] if side * side == cells else [1, cells]


def caption_with_attention(caption: Caption, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (text, score) plus ``words`` and their ``attention`` rows."""
    rows = caption.attention or []
    kept = [
        (token, row)
        for token, row in zip(caption.tokens, rows, strict=False)
        if token >= len(SPECIALS)
    ]
    words = caption.text.split()
    return {
        **base,
        "words": words,
        "attention": [[round(w, DIGITS) for w in row] for _, row in kept][: len(words)],
    }
