"""Flickr8k captions and splits, read from the shared data folder.

Files (see the folder's README): ``Flickr8k.token.txt`` with lines ``IMAGE#N<TAB>caption`` and
the official split lists ``Flickr_8k.{train,dev,test}Images.txt``. Images without a file under
``images/`` are skipped everywhere (the known orphan ``2258277193_586949ec62.jpg``; the dev
images are not shipped, so validation is carved from train with ``train_val_split``).

Caption cleaning (``clean_caption``), decided once for training, evaluation and references:

* lowercase; the captions are already tokenised PTB-style (``a dog 's ball .``);
* words are runs of letters; hyphenated compounds stay one word (``t-shirt``,
  ``snow-covered``) and a stray hyphen becomes a space;
* the possessive ``'s`` is re-attached to its word (``dog's``) so generated captions read
  naturally; other apostrophes and all other punctuation are dropped;
* tokens containing digits are dropped (under 0.1% of tokens, mostly ``2 dogs``; they would
  fall under the vocabulary's count threshold anyway);
* single letters other than ``a`` and ``i`` are dropped (stray ``t``, ``o``, ``x``...);
* whitespace collapsed; an empty result is kept as ``""`` and skipped by ``load_captions``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Literal

SplitName = Literal["train", "test", "dev"]

TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES: dict[str, str] = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
IMAGE_DIR = "images"

_POSSESSIVE = re.compile(r"\s+'s\b")
_WORD = re.compile(r"[a-z0-9]+(?:'s)?(?:-[a-z0-9]+(?:'s)?)*")
_KEEP_SINGLE = frozenset({"a", "i"})


def clean_caption(text: str) -> str:
    """Normalise one caption as described in the module docstring."""
    text = _POSSESSIVE.sub("'s", text.lower())
    words = []
    for word in _WORD.findall(text):
        if any(ch.isdigit() for ch in word):
            continue
        if len(word) == 1 and word not in _KEEP_SINGLE:
            continue
        words.append(word)
    return " ".join(words)


def image_dir(data_dir: Path) -> Path:
    return Path(data_dir) / IMAGE_DIR


def _present(data_dir: Path) -> set[str]:
    folder = image_dir(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"no images folder at {folder}")
    return {p.name for p in folder.iterdir() if p.is_file()}


def load_captions(data_dir: Path) -> dict[str, list[str]]:
    """Cleaned captions by image file name, in file order; images without a file are skipped."""
    path = Path(data_dir) / TOKEN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    present = _present(data_dir)
    captions: dict[str, list[str]] = defaultdict(list)
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        image, hash_sign, _ = key.partition("#")
        if not sep or not hash_sign:
            raise ValueError(f"{path}:{line_no}: expected 'IMAGE#N<TAB>caption', got {line!r}")
        if image not in present:
            continue
        cleaned = clean_caption(caption)
        if cleaned:
            captions[image].append(cleaned)
    return dict(captions)


def load_split(data_dir: Path, name: SplitName) -> list[str]:
    """Image names of an official split, in file order, restricted to images on disk."""
    if name not in SPLIT_FILES:
        raise ValueError(f"unknown split {name!r}; expected one of {sorted(SPLIT_FILES)}")
    path = Path(data_dir) / SPLIT_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    present = _present(data_dir)
    names = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [n for n in names if n and n in present]


def train_val_split(train_images: list[str], val_size: int = 500) -> tuple[list[str], list[str]]:
    """Hold out the last ``val_size`` images of the train list (deterministic)."""
    if not 0 < val_size < len(train_images):
        raise ValueError(f"val_size {val_size} must be in (0, {len(train_images)})")
    return list(train_images[:-val_size]), list(train_images[-val_size:])
