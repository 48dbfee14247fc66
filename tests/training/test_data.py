"""Flickr8k parsing and caption cleaning on the real shared files."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import clean_caption, load_captions, load_split, train_val_split

ORPHAN = "2258277193_586949ec62.jpg"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (
            "A child in a pink dress is climbing up a set of stairs in an entry way .",
            "a child in a pink dress is climbing up a set of stairs in an entry way",
        ),
        ("A dog 's ball , and a T-shirt !", "a dog's ball and a t-shirt"),
        ('Two dogs play   "tug-of -war" ; 2 men watch', "two dogs play tug-of war men watch"),
        ("Rock 'n' roll : O x", "rock roll"),
        ("I see a cat ?", "i see a cat"),
        (" . , ", ""),
    ],
)
def test_clean_caption(raw: str, clean: str) -> None:
    assert clean_caption(raw) == clean


@pytest.fixture(scope="module")
def captions(flickr8k_dir: Path) -> dict[str, list[str]]:
    return load_captions(flickr8k_dir)


def test_captions_cover_the_images_on_disk(
    captions: dict[str, list[str]], flickr8k_dir: Path
) -> None:
    assert ORPHAN not in captions
    assert len(captions) == 7000
    assert all(len(caps) == 5 for caps in captions.values())
    first = captions["1000268201_693b08cb0e.jpg"][0]
    assert first == "a child in a pink dress is climbing up a set of stairs in an entry way"
    assert all(c == clean_caption(c) for caps in captions.values() for c in caps)


def test_splits_keep_only_present_images(flickr8k_dir: Path) -> None:
    train = load_split(flickr8k_dir, "train")
    test = load_split(flickr8k_dir, "test")
    assert (len(train), len(test)) == (6000, 1000)
    assert not set(train) & set(test)
    dev = load_split(flickr8k_dir, "dev")  # dev images are not shipped (yet): only those on disk
    assert all((flickr8k_dir / "images" / name).is_file() for name in dev)
    assert train[0] == "2513260012_03d33305cf.jpg"


def test_train_val_split_is_deterministic_tail() -> None:
    images = [f"{i}.jpg" for i in range(10)]
    train, val = train_val_split(images, val_size=3)
    assert val == ["7.jpg", "8.jpg", "9.jpg"]
    assert train == images[:7]
    with pytest.raises(ValueError):
        train_val_split(images, val_size=10)


def test_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="caption file"):
        load_captions(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        load_split(tmp_path, "val")  # type: ignore[arg-type]
