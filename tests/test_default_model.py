"""The shipped model, end to end: ``python -m service`` with its defaults serves ``models/default``
over real HTTP, and its captions of real Flickr8k test images name what the images show.

The images are chosen by their human references, not by the model's output: photos whose five
references all mention a dog, and photos whose five references all mention a person and none an
animal. Content is checked by words, never by exact strings, so a retrained model passes as
long as it is sensible.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.manifest import load_manifest, verify_files
from tests.service.conftest import run_process
from training.data import load_captions, load_split

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "models" / "default"
DOG = re.compile(r"\b(dog|dogs|puppy|puppies)\b")
PERSON = re.compile(
    r"\b(man|men|woman|women|boy|boys|girl|girls|person|people|child|children|kid|kids|"
    r"player|players|rider|biker|skier|surfer|climber|snowboarder|skateboarder|crowd|team)\b"
)
ANIMAL = re.compile(r"\b(dog|dogs|puppy|cat|horse|animal|bird|cow|sheep|bull)\b")


def _pick(
    data_dir: Path, count: int, every: re.Pattern[str], no: re.Pattern[str] | None
) -> list[str]:
    captions = load_captions(data_dir)
    chosen = [
        name
        for name in load_split(data_dir, "test")
        if all(every.search(c) for c in captions[name])
        and not (no and any(no.search(c) for c in captions[name]))
    ]
    return chosen[:count]


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m service`` with no bundle setting (so the default, models/default), started
    outside the repository: the default bundle must not depend on the cwd."""
    log_path = tmp_path_factory.mktemp("service") / "service.log"
    cwd = tmp_path_factory.mktemp("cwd")
    with run_process(None, log_path, cwd=cwd, ready_timeout=180) as proc:
        yield proc.url


def _caption(url: str, path: Path) -> str:
    response = httpx.post(
        f"{url}/caption",
        content=path.read_bytes(),
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    text: str = response.json()["caption"]
    assert 2 <= len(text.split()) <= 25 and "<" not in text
    return text


def test_dog_photos_are_captioned_as_dogs(service_url: str, flickr8k_dir: Path) -> None:
    names = _pick(flickr8k_dir, 6, DOG, None)
    captions = {n: _caption(service_url, flickr8k_dir / "images" / n) for n in names}
    named = [n for n, text in captions.items() if DOG.search(text)]
    assert len(named) >= 5, captions


def test_people_photos_are_captioned_as_people(service_url: str, flickr8k_dir: Path) -> None:
    names = _pick(flickr8k_dir, 5, PERSON, ANIMAL)
    captions = {n: _caption(service_url, flickr8k_dir / "images" / n) for n in names}
    named = [n for n, text in captions.items() if PERSON.search(text) and not DOG.search(text)]
    assert len(named) >= 4, captions


def test_dog_words_attend_to_the_dogs(service_url: str, flickr8k_dir: Path) -> None:
    """``attention=true`` on the default model: one row of 7 x 7 weights per word, each a
    distribution, and the word "dog" looks at fewer cells than an even spread would."""
    name = _pick(flickr8k_dir, 1, DOG, None)[0]
    response = httpx.post(
        f"{service_url}/caption?attention=true",
        content=(flickr8k_dir / "images" / name).read_bytes(),
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["attention_grid"] == [7, 7]
    caption = body["captions"][0]
    words, weights = caption["words"], np.asarray(caption["attention"])
    assert words == caption["text"].split() and weights.shape == (len(words), 49)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=2.5e-3)  # 49 weights, 4 decimals
    dog_rows = [weights[i] for i, w in enumerate(words) if DOG.match(w)]
    assert dog_rows, words
    assert max(row.max() for row in dog_rows) > 2 / 49  # peaked, not spread evenly


def test_manifest_carries_the_test_metrics() -> None:
    manifest = load_manifest(BUNDLE)
    verify_files(BUNDLE, manifest)
    total = sum(entry.bytes for entry in manifest.files.values())
    assert total <= 40_000_000
    test = manifest.metrics["test"]
    assert test["split"] == "test" and test["counts"]["images"] == 1000
    metrics = test["metrics"]
    assert {"bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "nltk_bleu_4"} <= set(metrics)
    assert metrics["bleu_4"] > 0.15 and metrics["cider"] > 0.4
    low, high = test["bleu_4_ci"]["low"], test["bleu_4_ci"]["high"]
    assert low <= metrics["bleu_4"] <= high
    for other in ("test_int8", "test_greedy", "val"):
        assert other in manifest.metrics, other
    # the repetition and diversity figures SCST is known to push, stored beside the scores
    habits = test["habits"]
    assert habits["repeated_bigram"] < 0.2 and habits["dangling_end"] < 0.02, habits
    assert habits["distinct"] > 0.5, habits


@pytest.mark.parametrize(
    ("bundle", "use_int8"),
    [
        (BUNDLE, True),
        (REPO_ROOT / "models" / "ensemble", False),
        (REPO_ROOT / "models" / "merge", False),
    ],
    ids=["default-int8", "ensemble", "merge"],
)
def test_other_shipped_variants_also_see_the_dogs(
    bundle: Path, use_int8: bool, flickr8k_dir: Path
) -> None:
    """The int8 encoder of the default bundle, the two-decoder ensemble it was distilled from
    (models/ensemble) and the merge-decoder bundle (models/merge), each picked by a setting,
    caption the same dog photos sensibly."""
    from service.model import CaptionModel

    model = CaptionModel.load(bundle, intra_op_threads=2, use_int8=use_int8)
    names = _pick(flickr8k_dir, 6, DOG, None)
    images = np.stack([model.preprocess((flickr8k_dir / "images" / n).read_bytes()) for n in names])
    captions = [c[0].text for c in model.caption_images(images, [model.request(beam_size=3)] * 6)]
    assert sum(bool(DOG.search(text)) for text in captions) >= 5, captions
