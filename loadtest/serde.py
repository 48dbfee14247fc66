"""Typed results to JSON and back: ``dataclasses.asdict`` out, ``from_dict`` in.

``from_dict`` rebuilds a dataclass from what ``asdict`` wrote (after a JSON round trip), guided by
its field types: nested dataclasses, ``list``, ``tuple``, ``dict[str, X]``, ``X | None``,
``Path`` and plain scalars; a key the class does not know is an error, so a renamed field fails
loudly instead of reading as its default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], data: Any) -> T:
    """``cls`` (a dataclass) from a JSON object written by ``asdict``."""
    return typing.cast(T, _convert(cls, data))


def _convert(kind: Any, value: Any) -> Any:
    if value is None or kind is Any:
        return value
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind) if f.init}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"{kind.__name__}: unknown keys {sorted(unknown)}")
        return kind(**{k: _convert(hints[k], v) for k, v in value.items()})
    if origin is list:
        return [_convert(args[0], v) for v in value]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
    if origin is dict:
        return {k: _convert(args[1], v) for k, v in value.items()}
    if kind is Path:
        return Path(value)
    if kind is float and isinstance(value, int):
        return float(value)
    return value
