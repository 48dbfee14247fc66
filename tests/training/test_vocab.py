"""Vocabulary: count threshold, specials first, train captions only, stable order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.vocabulary import Vocabulary
from training.vocab import build_vocabulary, encode_captions

CAPTIONS = {
    "a.jpg": ["a dog runs", "a dog jumps", "the dog runs"],
    "b.jpg": ["a cat sits", "a cat runs"],
    "held_out.jpg": ["zebra zebra zebra zebra zebra"],
}


def test_min_count_specials_and_order() -> None:
    vocab = build_vocabulary(CAPTIONS, ["a.jpg", "b.jpg"], min_count=2)
    # a:4, dog:3, runs:3, cat:2 -> count desc, ties alphabetical
    assert vocab.tokens == ("<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs", "cat")
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)


def test_only_given_images_count() -> None:
    vocab = build_vocabulary(CAPTIONS, ["a.jpg", "b.jpg"], min_count=1)
    assert "zebra" not in vocab.index
    assert "zebra" in build_vocabulary(CAPTIONS, ["held_out.jpg"], min_count=5).index


def test_encode_pads_cuts_and_maps_unknown(tmp_path: Path) -> None:
    vocab = build_vocabulary(CAPTIONS, ["a.jpg", "b.jpg"], min_count=2)
    ids = encode_captions(vocab, ["a dog runs", "a zebra", "a dog a dog a dog"], max_length=6)
    assert ids.dtype == np.int32
    a, dog, runs = vocab.index["a"], vocab.index["dog"], vocab.index["runs"]
    np.testing.assert_array_equal(
        ids,
        [
            [1, a, dog, runs, 2, 0],
            [1, a, 3, 2, 0, 0],
            [1, a, dog, a, dog, 2],
        ],
    )
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab


def test_real_train_vocabulary_size(flickr8k_dir: Path) -> None:
    from training.data import load_captions, load_split, train_val_split

    captions = load_captions(flickr8k_dir)
    train, _ = train_val_split(load_split(flickr8k_dir, "train"))
    vocab = build_vocabulary(captions, train, min_count=5)
    assert 2000 < len(vocab) < 3000
    assert vocab.tokens[4] == "a"
    assert build_vocabulary(captions, train, min_count=5) == vocab
