"""The result row: exactly one per input, keyed by its id, whether it was captioned or failed.

A failed input has ``status="error"``, an ``error`` and null results (never an empty caption), so
"not processed" and "nothing found" stay distinct. ``resume_key`` says whether an earlier row
still answers an input: same id, same bytes, same model version, same options.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypedDict

from service.errors import CaptionError

Status = Literal["ok", "error"]


class ModelInfo(TypedDict):
    name: str
    version: str


class Options(TypedDict):
    beam_size: int
    max_length: int
    num_captions: int


class ScoredCaption(TypedDict):
    text: str
    score: float  # length-normalised log-probability, higher is better


class ErrorInfo(TypedDict):
    code: str
    detail: str


class FileUnreadable(CaptionError):
    """A local input that cannot be read: missing, a folder, no permission (a 404-like failure)."""

    status_code = 404
    code = "file_unreadable"


@dataclass(frozen=True, kw_only=True)
class Row:
    """One output row; fields are listed in output column order."""

    id: str
    path: str | None = None  # local inputs
    uri: str | None = None  # URL (and other non-local) inputs
    sha256: str | None = None  # of the encoded image bytes, when they were read
    caption: str | None = None
    captions: list[ScoredCaption] | None = None  # n-best, only when num_captions > 1
    model: ModelInfo
    options: Options
    status: Status
    error: ErrorInfo | None = None
    width: int | None = None
    height: int | None = None
    timings_ms: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a row needs a non-empty id")
        if self.status not in ("ok", "error"):
            raise ValueError(f"row {self.id!r}: status is 'ok' or 'error', not {self.status!r}")
        if (self.status == "error") != (self.error is not None):
            raise ValueError(f"row {self.id!r}: an error row carries an error, an ok row none")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """The inverse of ``to_dict``; missing optional fields are null, unknown keys an error."""
        names = {field.name for field in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown row fields: {', '.join(sorted(unknown))}")
        for required in ("id", "model", "options", "status"):
            if data.get(required) in (None, ""):
                raise ValueError(f"row is missing {required!r}")
        return cls(**data)

    @classmethod
    def failed(
        cls,
        *,
        id: str,
        error: CaptionError,
        model: ModelInfo,
        options: Options,
        path: str | None = None,
        uri: str | None = None,
        sha256: str | None = None,
    ) -> Row:
        """An error row from any ``service.errors`` exception (its stable code and detail)."""
        info = ErrorInfo(code=error.code, detail=error.detail)
        return cls(
            id=id, path=path, uri=uri, sha256=sha256, model=model, options=options,
            status="error", error=info,
        )  # fmt: skip


COLUMNS: tuple[str, ...] = tuple(field.name for field in fields(Row))
NESTED: tuple[str, ...] = ("captions", "model", "options", "error", "timings_ms")  # dicts, lists


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def resume_key(row: Row) -> tuple[str, str | None, str, str]:
    """(id, sha256, model version, options): an earlier row with the same key answers the input."""
    return (row.id, row.sha256, row.model["version"], canonical_json(row.options))
