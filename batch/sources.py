"""Inputs of ``captioner caption`` -> ``Item``s in a stable order, each id unique.

What an input string is, checked in this order:
    ``-``                         a list read from stdin
    ``scheme://...``, ``file:``   one URI item (http/https are URLs; other schemes are kept so that
                                  they become error rows, never dropped)
    a folder                      walked recursively (symlinked folders not followed), files
                                  matching ``patterns`` (case-insensitive), sorted
    ``.csv .jsonl .ndjson .parquet``  a manifest: ``uri`` column required, ``id`` optional
    ``.txt``, ``.lst``            a list: one path or URI per line, blank lines and ``#`` skipped
    a file matching ``patterns``  one image item, even when missing (it becomes an error row)
    another UTF-8 text file       a list; any other file (binary, or missing) is one item

An item's id is the manifest's ``id``, else the path or URI as written (a folder's files: the
folder as given joined with the path below it). Paths in lists and manifests are taken as written,
relative to the working directory (as ``tar -T`` and ``wget -i`` do). Two inputs with the same id
are refused (``SourceError``): every input gets its own row keyed by id.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from batch.rows import FileUnreadable
from batch.storage import STORAGE_SCHEMES, checked_size, read_object
from service.errors import PayloadTooLarge, UrlForbidden

IMAGE_PATTERNS: tuple[str, ...] = tuple(
    f"*.{ext}" for ext in ("jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "avif")
)
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")
LIST_SUFFIXES = (".txt", ".lst")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://|^(file|data):", re.ASCII)
_SNIFF_BYTES = 8192


class SourceError(ValueError):
    """An input that cannot be listed: unreadable list or manifest, no ``uri``, duplicate ids."""


@dataclass(frozen=True)
class Item:
    id: str
    uri: str  # a local path as written, or a URI
    is_url: bool  # http:// or https://
    origin: str = field(default="", compare=False)
    """The folder or manifest input that listed it ("" for an input named directly or listed)."""

    @property
    def scheme(self) -> str | None:
        """The URI scheme in lower case (``"http"``, ``"ftp"``), None for a local path."""
        return uri_scheme(self.uri)


def uri_scheme(text: str) -> str | None:
    match = _SCHEME.match(text)
    return None if match is None else (match.group(1) or match.group(2)).lower()


def make_item(uri: str, id: str | None = None) -> Item:
    return Item(id=id or uri, uri=uri, is_url=uri_scheme(uri) in ("http", "https"))


def load_items(
    inputs: Sequence[str],
    *,
    patterns: Sequence[str] = IMAGE_PATTERNS,
    stdin: TextIO | None = None,
) -> list[Item]:
    """All items of ``inputs`` in order; refuses duplicate ids, naming up to five of them."""
    items = list(_iter_all(inputs, patterns, stdin))
    counts = Counter(item.id for item in items)
    duplicates = [item_id for item_id, n in counts.items() if n > 1]
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:5])
        more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        raise SourceError(
            f"{len(duplicates)} id(s) occur more than once in the inputs: {shown}{more}; "
            "every input needs its own id (give a manifest with an 'id' column)"
        )
    return items


def iter_items(
    inputs: Sequence[str],
    *,
    patterns: Sequence[str] = IMAGE_PATTERNS,
    stdin: TextIO | None = None,
) -> Iterator[Item]:
    """Like ``load_items`` but lazy: raises ``SourceError`` at the first repeated id."""
    seen: set[str] = set()
    for item in _iter_all(inputs, patterns, stdin):
        if item.id in seen:
            raise SourceError(f"id {item.id!r} occurs more than once in the inputs")
        seen.add(item.id)
        yield item


def _iter_all(
    inputs: Sequence[str], patterns: Sequence[str], stdin: TextIO | None
) -> Iterator[Item]:
    for text in inputs:
        yield from _iter_one(text, patterns, stdin)


def _iter_one(text: str, patterns: Sequence[str], stdin: TextIO | None) -> Iterator[Item]:
    if text == "-":
        yield from _list_lines(stdin if stdin is not None else sys.stdin)
        return
    if uri_scheme(text) is not None:
        yield make_item(text)
        return
    path = Path(text)
    suffix = path.suffix.lower()
    if path.is_dir():
        yield from (replace(item, origin=text) for item in _walk(text, patterns))
    elif suffix in MANIFEST_SUFFIXES:
        yield from (replace(item, origin=text) for item in _manifest(path))
    elif suffix in LIST_SUFFIXES or (not _matches(path.name, patterns) and _is_text(path)):
        try:
            with path.open(encoding="utf-8-sig") as lines:
                yield from _list_lines(lines)
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"cannot read the list {text}: {exc}") from exc
    else:
        yield make_item(text)


def _matches(name: str, patterns: Sequence[str], rel: str | None = None) -> bool:
    """Case-insensitive glob match of the name, or of the path below the folder for ``a/*.jpg``."""
    for pattern in patterns:
        target = rel if rel is not None and "/" in pattern else name
        if fnmatch.fnmatchcase(target.lower(), pattern.lower()):
            return True
    return False


def _walk(folder: str, patterns: Sequence[str]) -> Iterator[Item]:
    found: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(folder):
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            if _matches(name, patterns, rel.replace(os.sep, "/")):
                found.append(rel)
    for rel in sorted(found):
        yield make_item(os.path.join(folder, rel))


def _is_text(path: Path) -> bool:
    """An existing file whose first bytes are UTF-8 without NULs (a list, not an image)."""
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end is still text
        return exc.start >= len(head) - 3
    return True


def _list_lines(lines: Iterable[str]) -> Iterator[Item]:
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield make_item(entry)


def _manifest(path: Path) -> Iterator[Item]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            yield from _csv_manifest(path)
        elif suffix == ".parquet":
            yield from _parquet_manifest(path)
        else:
            yield from _jsonl_manifest(path)
    except SourceError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"cannot read the manifest {path}: {exc}") from exc


def _manifest_item(path: Path, where: str, uri: object, id: object) -> Item:
    if uri is None or str(uri).strip() == "":
        raise SourceError(f"{path}{where}: empty 'uri'")
    uri_text = str(uri).strip()
    id_text = None if id is None or str(id) == "" else str(id)
    return make_item(uri_text, id_text)


def _csv_manifest(path: Path) -> Iterator[Item]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "uri" not in reader.fieldnames:
            raise SourceError(f"the manifest {path} has no 'uri' column")
        for record in reader:
            yield _manifest_item(path, f":{reader.line_num}", record["uri"], record.get("id"))


def _jsonl_manifest(path: Path) -> Iterator[Item]:
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or "uri" not in record:
                raise SourceError(f"{path}:{number}: the manifest needs a 'uri' field on each line")
            yield _manifest_item(path, f":{number}", record["uri"], record.get("id"))


def _parquet_manifest(path: Path) -> Iterator[Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowException as exc:
        raise SourceError(f"cannot read the manifest {path}: {exc}") from exc
    names = parquet.schema_arrow.names
    if "uri" not in names:
        raise SourceError(f"the manifest {path} has no 'uri' column")
    columns = ["uri", "id"] if "id" in names else ["uri"]
    number = 0
    for batch in parquet.iter_batches(columns=columns):
        ids = batch.column("id").to_pylist() if "id" in columns else [None] * batch.num_rows
        for uri, item_id in zip(batch.column("uri").to_pylist(), ids, strict=True):
            number += 1
            yield _manifest_item(path, f" row {number}", uri, item_id)


def read_item_bytes(item: Item, max_bytes: int) -> bytes:
    """The bytes of a local item, or a ``service.errors`` error naming what is wrong with it.

    Missing or unreadable -> ``FileUnreadable``; zero bytes -> ``EmptyBody``; over ``max_bytes``
    -> ``PayloadTooLarge``; a ``gs://`` object is read through ``batch.storage``; any other
    non-http(s) URI -> ``UrlForbidden``. http(s) URLs are fetched by
    the caller (``service.urlfetch``, with its SSRF guard), so passing one is a programming error.
    """
    if item.is_url:
        raise ValueError(f"{item.uri} is a URL: fetch it with service.urlfetch")
    scheme = item.scheme
    if scheme in STORAGE_SCHEMES:
        return read_object(item.uri, max_bytes)
    if scheme is not None:
        raise UrlForbidden(
            f"{item.uri}: only http(s) URLs and gs:// objects are read, not {scheme}:"
        )
    try:
        # non-blocking: a named pipe among the images must be refused, not waited on for ever
        fd = os.open(item.uri, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FileUnreadable(f"{item.uri}: not a regular file")
            if info.st_size > max_bytes:
                raise PayloadTooLarge(f"{item.uri}: {info.st_size} bytes, over {max_bytes}")
            data = f.read(max_bytes + 1)  # the file may have grown since fstat
    except IsADirectoryError as exc:
        raise FileUnreadable(f"{item.uri}: is a folder") from exc
    except OSError as exc:
        raise FileUnreadable(f"{item.uri}: {exc.strerror or exc}") from exc
    return checked_size(data, item.uri, max_bytes)
