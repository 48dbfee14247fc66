"""The caption vocabulary as stored in a bundle's ``vocab.json``.

Format: ``{"tokens": ["<pad>", "<start>", "<end>", "<unk>", "a", ...], "min_count": 5}``; a
token's id is its index. Training builds it (``training.vocab``); serving only reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]
    min_count: int = 1
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        object.__setattr__(self, "index", {tok: i for i, tok in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def start_id(self) -> int:
        return 1

    @property
    def end_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def encode(self, words: Iterable[str]) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in words]

    def decode(self, ids: Sequence[int]) -> str:
        """Words for ``ids`` up to the first ``<end>``, specials dropped."""
        words: list[str] = []
        for i in ids:
            if i == self.end_id:
                break
            if i >= len(SPECIALS):
                words.append(self.tokens[i])
        return " ".join(words)

    def to_json(self) -> str:
        return json.dumps({"tokens": list(self.tokens), "min_count": self.min_count})

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        data = json.loads(Path(path).read_text())
        return cls(tokens=tuple(data["tokens"]), min_count=int(data.get("min_count", 1)))
