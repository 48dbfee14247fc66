"""Caption habits: the repetition, truncation, diversity and gender figures of a caption set.

Self-critical training (SCST) is known to game CIDEr with repeated phrases ("a man in a blue
shirt and a blue shirt") and truncated endings ("a dog runs with a"). ``caption_habits`` measures
those habits of one caption per image, next to its diversity and the genders it names, as the
``CaptionHabits`` figures (``to_dict`` for a model manifest's JSON):

* ``repeated_bigram``: share of captions in which some word bigram occurs more than once (about
  5% of Flickr8k's first reference captions do, mostly "in a" twice);
* ``dangling_end``: share of captions ending on a word of ``DANGLING_END_WORDS``;
* ``distinct``, ``mean_length``, ``vocabulary``: distinct captions / captions, words per caption,
  distinct words over all captions;
* ``male_share``, ``female_share``: share of captions naming a word of ``MALE_WORDS`` /
  ``FEMALE_WORDS`` (a caption naming both counts in both);
* with references only, else ``None``: ``reference_male_share``, ``reference_female_share``
  (share of images whose references mostly, more than half of them, name male / female words)
  and ``gender_error`` (over the images whose caption names one gender only: the share whose
  references mostly name the other gender and not mostly that one).

Captions are lower-case strings of words separated by whitespace, keyed by image id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

DANGLING_END_WORDS = frozenset(
    # articles
    ["a", "an", "the"]
    # conjunctions
    + ["and", "or", "but", "nor", "while", "as", "than", "because", "if"]
    # prepositions that need an object
    + ["with", "without", "in", "on", "of", "at", "to", "for", "from", "by", "into", "onto"]
    + ["near", "through", "over", "under", "across", "between", "toward", "towards", "against"]
    + ["among", "during", "beside", "beneath", "atop", "upon", "amid", "like"]
    # possessive determiners
    + ["his", "her", "their", "its", "my", "your", "our"]
    # copulas: "a dog is"
    + ["is", "are"]
)
"""Words a finished English caption does not end on. About 1% of Flickr8k's reference captions
still do, nearly all on "on", "her" or "by" used as particle or object ("with a hat on", "hugs
her", "walks by"): a small floor that a truncating model rises far above."""

MALE_WORDS = frozenset(
    ["man", "men", "boy", "boys", "he", "his", "him", "himself", "guy", "guys", "male", "males"]
    + ["gentleman", "gentlemen", "father", "fathers", "dad", "son", "sons", "brother", "brothers"]
    + ["husband", "boyfriend", "grandfather", "grandpa", "uncle", "king", "mr", "sir"]
    + ["businessman", "businessmen", "policeman", "policemen", "fireman", "firemen"]
    + ["fisherman", "fishermen", "cowboy", "cowboys", "schoolboy", "schoolboys"]
)
FEMALE_WORDS = frozenset(
    ["woman", "women", "girl", "girls", "she", "her", "hers", "herself", "lady", "ladies"]
    + ["female", "females", "mother", "mothers", "mom", "daughter", "daughters", "sister"]
    + ["sisters", "wife", "girlfriend", "grandmother", "grandma", "aunt", "queen", "mrs"]
    + ["businesswoman", "businesswomen", "policewoman", "cowgirl", "cowgirls", "bride"]
    + ["schoolgirl", "schoolgirls"]
)

Gender = Literal["male", "female"]


@dataclass(frozen=True)
class CaptionHabits:
    """The figures of one caption set; shares are in [0, 1] (see the module docstring)."""

    captions: int
    repeated_bigram: float
    dangling_end: float
    distinct: float
    mean_length: float
    vocabulary: int
    male_share: float
    female_share: float
    reference_male_share: float | None = None
    reference_female_share: float | None = None
    gender_error: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        """The figures by field name, plain ints, floats and ``None`` (JSON-ready)."""
        return asdict(self)


def words_of(caption: str) -> list[str]:
    # Lower-cased again: a stray capital ("Man") must not hide a gendered word.
    return caption.lower().split()


def has_repeated_bigram(words: Sequence[str]) -> bool:
    bigrams = list(zip(words, words[1:], strict=False))
    return len(set(bigrams)) < len(bigrams)


def has_dangling_end(words: Sequence[str]) -> bool:
    return bool(words) and words[-1] in DANGLING_END_WORDS


def genders_named(words: Sequence[str]) -> tuple[bool, bool]:
    """(names a male word, names a female word)."""
    # "'s" stripped: cleaned Flickr8k captions keep possessives as one word ("man's").
    bases = {word.removesuffix("'s") for word in words}
    return not bases.isdisjoint(MALE_WORDS), not bases.isdisjoint(FEMALE_WORDS)


def caption_gender(words: Sequence[str]) -> Gender | None:
    """The one gender a caption names; ``None`` for neither or both."""
    male, female = genders_named(words)
    if male == female:
        return None
    return "male" if male else "female"


def reference_majority(references: Sequence[str]) -> tuple[bool, bool]:
    """(most references name a male word, most name a female word): more than half each."""
    named = [genders_named(words_of(ref)) for ref in references]
    half = len(references) / 2
    return sum(m for m, _ in named) > half, sum(f for _, f in named) > half


def contradicts(gender: Gender | None, majority: tuple[bool, bool]) -> bool:
    """The caption's one gender is the other one of what most references say, and only that."""
    male, female = majority
    if gender == "male":
        return female and not male
    if gender == "female":
        return male and not female
    return False


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def caption_habits(
    hypotheses: Mapping[str, str], references: Mapping[str, Sequence[str]] | None = None
) -> CaptionHabits:
    """The habits of one caption per image; reference figures only when references are given."""
    if not hypotheses:
        raise ValueError("no captions to measure")
    tokens = {key: words_of(text) for key, text in hypotheses.items()}
    captions = list(tokens.values())
    named = [genders_named(words) for words in captions]
    habits = CaptionHabits(
        captions=len(captions),
        repeated_bigram=_share([has_repeated_bigram(words) for words in captions]),
        dangling_end=_share([has_dangling_end(words) for words in captions]),
        distinct=len({" ".join(words) for words in captions}) / len(captions),
        mean_length=sum(len(words) for words in captions) / len(captions),
        vocabulary=len({word for words in captions for word in words}),
        male_share=_share([male for male, _ in named]),
        female_share=_share([female for _, female in named]),
    )
    if references is None:
        return habits
    return _with_references(habits, tokens, references)


def _with_references(
    habits: CaptionHabits,
    tokens: Mapping[str, list[str]],
    references: Mapping[str, Sequence[str]],
) -> CaptionHabits:
    missing = [key for key in tokens if not references.get(key)]
    if missing:
        raise ValueError(f"{len(missing)} captions without references, e.g. {missing[:3]}")
    majority = {key: reference_majority(references[key]) for key in tokens}
    gendered = {key: g for key, words in tokens.items() if (g := caption_gender(words))}
    return replace(
        habits,
        reference_male_share=_share([male for male, _ in majority.values()]),
        reference_female_share=_share([female for _, female in majority.values()]),
        # Over the captions that name one gender: how often the references say the other.
        gender_error=_share([contradicts(g, majority[key]) for key, g in gendered.items()]),
    )
