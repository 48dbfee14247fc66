"""Caption habits: repetition, dangling ends, diversity and gender figures on made-up captions."""

from __future__ import annotations

import json

import pytest

from training.caption_habits import (
    DANGLING_END_WORDS,
    FEMALE_WORDS,
    MALE_WORDS,
    CaptionHabits,
    caption_gender,
    caption_habits,
    contradicts,
    has_dangling_end,
    has_repeated_bigram,
    reference_majority,
    words_of,
)

HYPOTHESES = {
    "1.jpg": "a man in a blue shirt and a blue shirt",  # repeated "a blue", "blue shirt"; male
    "2.jpg": "a dog runs with a",  # dangling "a"
    "3.jpg": "a girl in a pink dress",  # female
    "4.jpg": "a dog runs on the grass",
    "5.jpg": "a dog runs on the grass",  # duplicate of 4
    "6.jpg": "a man and a woman walk",  # both genders
}


def test_figures_without_references() -> None:
    habits = caption_habits(HYPOTHESES)
    assert habits.captions == 6
    assert habits.repeated_bigram == pytest.approx(1 / 6)
    assert habits.dangling_end == pytest.approx(1 / 6)
    assert habits.distinct == pytest.approx(5 / 6)
    # words: 10 + 5 + 6 + 6 + 6 + 6 = 39
    assert habits.mean_length == pytest.approx(39 / 6)
    # a man in blue shirt and dog runs with girl pink dress on the grass woman walk
    assert habits.vocabulary == 17
    assert habits.male_share == pytest.approx(2 / 6)  # 1.jpg, 6.jpg
    assert habits.female_share == pytest.approx(2 / 6)  # 3.jpg, 6.jpg
    assert habits.reference_male_share is None
    assert habits.reference_female_share is None
    assert habits.gender_error is None


def test_repeated_bigram_and_dangling_end() -> None:
    assert has_repeated_bigram("a dog runs a dog runs".split())
    assert not has_repeated_bigram("a dog and a cat".split())  # "a" twice, no bigram twice
    assert not has_repeated_bigram([])
    for text in ("a dog runs with a", "a boy jumps into", "a girl holds her", "a man and"):
        assert has_dangling_end(text.split()), text
    for text in ("a dog runs", "a man rides a bike outside", ""):
        assert not has_dangling_end(text.split()), text
    assert {"a", "an", "the", "and", "with", "of", "his", "their"} <= DANGLING_END_WORDS
    assert not {"outside", "up", "down", "it", "them", "him"} & DANGLING_END_WORDS


def test_gender_words() -> None:
    assert not MALE_WORDS & FEMALE_WORDS
    assert caption_gender("a man's hat".split()) == "male"  # possessive form
    assert caption_gender(words_of("A Woman sits")) == "female"
    assert caption_gender("two girls and a boy".split()) is None  # both
    assert caption_gender("a dog runs".split()) is None
    # 2 of 3 references name a woman, 1 a man: mostly female only.
    refs = ["a woman sits", "a lady on a bench", "a man on a bench"]
    assert reference_majority(refs) == (False, True)
    assert reference_majority(["a man", "a person"]) == (False, False)  # half is no majority
    assert contradicts("male", (False, True))
    assert not contradicts("male", (True, True))  # most references name both
    assert not contradicts("female", (False, True))
    assert not contradicts(None, (True, False))


def test_gender_error_with_references() -> None:
    hypotheses = {
        "1.jpg": "a man in a red shirt",  # references: mostly women -> contradicted
        "2.jpg": "a girl jumps",  # references: mostly boys -> contradicted
        "3.jpg": "a boy runs",  # references: mostly boys -> right
        "4.jpg": "a woman and a man",  # both genders: not gendered, never an error
        "5.jpg": "a dog runs",  # no gender
    }
    references = {
        "1.jpg": ["a woman in red", "a lady in a red shirt", "a person in red"],
        "2.jpg": ["a boy jumps", "two boys jump", "a child jumps"],
        "3.jpg": ["a boy runs", "a young boy running", "a kid runs"],
        "4.jpg": ["a woman sits", "a woman and her dog", "a girl and a dog"],
        "5.jpg": ["a dog runs", "a brown dog", "a dog in the snow"],
        "unused.jpg": ["a man"],
    }
    habits = caption_habits(hypotheses, references)
    assert habits.reference_male_share == pytest.approx(2 / 5)  # 2.jpg, 3.jpg
    assert habits.reference_female_share == pytest.approx(2 / 5)  # 1.jpg, 4.jpg
    assert habits.gender_error == pytest.approx(2 / 3)  # 1.jpg, 2.jpg of 1, 2, 3.jpg
    assert habits.male_share == pytest.approx(3 / 5)
    assert habits.female_share == pytest.approx(2 / 5)


def test_no_gendered_caption_has_zero_error() -> None:
    habits = caption_habits({"1.jpg": "a dog runs"}, {"1.jpg": ["a man and his dog"]})
    assert habits.gender_error == 0.0
    assert habits.reference_male_share == 1.0


def test_to_dict_is_json_ready() -> None:
    habits = caption_habits(HYPOTHESES)
    as_dict = habits.to_dict()
    assert list(as_dict) == [
        "captions",
        "repeated_bigram",
        "dangling_end",
        "distinct",
        "mean_length",
        "vocabulary",
        "male_share",
        "female_share",
        "reference_male_share",
        "reference_female_share",
        "gender_error",
    ]
    assert type(as_dict["captions"]) is int
    assert type(as_dict["distinct"]) is float
    assert CaptionHabits(**json.loads(json.dumps(as_dict))) == habits


def test_rejects_empty_and_missing_references() -> None:
    with pytest.raises(ValueError, match="no captions"):
        caption_habits({})
    with pytest.raises(ValueError, match="1 captions without references"):
        caption_habits({"1.jpg": "a dog", "2.jpg": "a cat"}, {"1.jpg": ["a dog"]})
