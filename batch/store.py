"""The result file: rows appended as they finish, earlier rows read back for resume, kill -9 safe.

The format follows the extension: ``.jsonl``/``.ndjson`` (one JSON object a line), ``.csv`` (one
row a line; captions, model, options, error and timings_ms as JSON in their cells; empty cell =
null), ``.parquet`` (typed nested columns). Rules:

- Each row is written with one ``write`` and flushed to the OS at once, so a killed process loses
  no finished row; ``os.fsync`` runs at most every ``fsync_every_rows`` rows or ``fsync_every_s``
  seconds (checked on append, and on close): a power cut loses at most that window.
- A crash leaves at most a torn last record (no final newline); the next ``open`` cuts it away.
  Any other bad record is refused (``StoreError``), so a foreign file is never rewritten.
- Parquet cannot be appended: rows go to ``<out>.journal.jsonl`` and ``close`` writes the Parquet
  file (earlier Parquet rows + journal, latest row per id) atomically, then removes the journal.
  A crash leaves the journal, which the next ``open`` reads.
- ``close(compact=True)`` rewrites the file atomically (tmp + ``os.replace``) with one row per id,
  the latest, in first-seen order; Parquet is only ever written so (``compact=False`` just syncs
  its journal). Leaving a ``with`` block by an exception closes without compacting.
- ``force=True`` moves an earlier output (and journal) aside to ``<name>.bak`` and starts empty.
- One writer per output: the file is ``flock``ed; a second run on it gets ``StoreError``.

Every row read or written is kept in memory (``done(id)`` answers from it): about 1 KB a row.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from batch.rows import COLUMNS, NESTED, Row

Format = Literal["jsonl", "csv", "parquet"]
SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
}  # fmt: skip
_INT_COLUMNS = ("width", "height")


class StoreError(ValueError):
    """The output cannot be used: unknown extension, foreign or corrupt content, in use."""


def output_format(path: str | os.PathLike[str]) -> Format:
    path = Path(path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(SUFFIXES)
        raise StoreError(f"{path}: unknown output format {path.suffix!r} (use one of {known})")
    return fmt


def journal_path(path: str | os.PathLike[str]) -> Path:
    """Where rows are appended: the output itself, or ``<out>.journal.jsonl`` for Parquet."""
    path = Path(path)
    if output_format(path) == "parquet":
        return path.with_name(path.name + ".journal.jsonl")
    return path


class ResultStore:
    """An open output; use ``ResultStore.open`` (or ``with ResultStore.open(...) as store``)."""

    def __init__(
        self,
        path: Path,
        handle: IO[bytes],
        rows: dict[str, Row],
        records: int,
        header: list[str] | None,
        fsync_every_rows: int,
        fsync_every_s: float,
    ) -> None:
        self.path = path
        self.format = output_format(path)
        self._journal = journal_path(path)
        self._handle = handle
        self._rows = rows  # latest row per id; dict order = first-seen order
        self._records = records  # rows physically in the journal (duplicates included)
        self._header = header  # CSV column order of the existing file
        self._fsync_every_rows = max(1, fsync_every_rows)
        self._fsync_every_s = fsync_every_s
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        force: bool = False,
        fsync_every_rows: int = 256,
        fsync_every_s: float = 1.0,
    ) -> ResultStore:
        out = Path(path)
        fmt = output_format(out)
        journal = journal_path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = _open_locked(journal)
        if force:
            for old in dict.fromkeys((out, journal)):
                if old.exists():
                    os.replace(old, old.with_name(old.name + ".bak"))
            handle.close()
            handle = _open_locked(journal)
        try:
            rows: dict[str, Row] = {}
            if fmt == "parquet" and out.exists():
                for row in _read_parquet(out):
                    rows[row.id] = row
            journal_rows, header = _read_journal(
                handle, journal, "csv" if fmt == "csv" else "jsonl"
            )
            for row in journal_rows:
                rows[row.id] = row
            if fmt == "csv" and header is None:
                header = list(COLUMNS)
                handle.write(_csv_line(header))
                handle.flush()
        except BaseException:
            handle.close()
            raise
        return cls(out, handle, rows, len(journal_rows), header, fsync_every_rows, fsync_every_s)

    def done(self, id: str) -> Row | None:
        """The latest row recorded for ``id`` (this run or an earlier one), or None."""
        return self._rows.get(id)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Row]:
        """The latest row per id, in first-seen order."""
        return iter(list(self._rows.values()))

    def append(self, row: Row) -> None:
        """Write ``row`` now (one write, flushed); it becomes ``done(row.id)``."""
        data = _csv_row(row, self._header) if self._header else _jsonl_row(row)
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.path} is closed")
            self._handle.write(data)
            self._handle.flush()
            self._rows[row.id] = row
            self._records += 1
            self._unsynced += 1
            if (
                self._unsynced >= self._fsync_every_rows
                or time.monotonic() - self._last_sync >= self._fsync_every_s
            ):
                self._sync()

    def close(self, *, compact: bool = True) -> None:
        """Sync and close; with ``compact`` (always for Parquet) keep one row per id, atomically."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sync()
                if self.format == "parquet":
                    if compact:
                        _atomic_write(self.path, lambda tmp: _write_parquet(tmp, self._rows))
                        self._journal.unlink()
                elif compact and self._records > len(self._rows):
                    _atomic_write(self.path, self._write_lines)
            finally:
                self._handle.close()  # releases the flock

    def _sync(self) -> None:
        os.fsync(self._handle.fileno())
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def _write_lines(self, tmp: Path) -> None:
        with tmp.open("wb") as f:
            if self.format == "csv":
                f.write(_csv_line(list(COLUMNS)))
                f.writelines(_csv_row(row, list(COLUMNS)) for row in self._rows.values())
            else:
                f.writelines(_jsonl_row(row) for row in self._rows.values())

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(compact=exc_type is None)


def _open_locked(journal: Path) -> IO[bytes]:
    handle = journal.open("a+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(f"{journal} is being written by another run") from None
    return handle


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` beside ``path``, fsync it, then ``os.replace``: readers see old or new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- line formats -------------------------------------------------------------------------------


def _jsonl_row(row: Row) -> bytes:
    return (json.dumps(row.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")


def _csv_line(cells: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue().encode("utf-8")


def _csv_row(row: Row, header: list[str]) -> bytes:
    values = row.to_dict()
    cells: list[str] = []
    for column in header:
        value = values[column]
        if value is None:
            cells.append("")
        elif column in NESTED:
            cells.append(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
        else:
            cells.append(str(value))
    return _csv_line(cells)


def _csv_decode(cells: list[str], header: list[str]) -> Row:
    if len(cells) != len(header):
        raise ValueError(f"{len(cells)} cells for {len(header)} columns")
    values: dict[str, Any] = {}
    for column, cell in zip(header, cells, strict=True):
        if cell == "":
            values[column] = None
        elif column in NESTED:
            values[column] = json.loads(cell)
        elif column in _INT_COLUMNS:
            values[column] = int(cell)
        else:
            values[column] = cell
    return Row.from_dict(values)


def _records(handle: IO[bytes], csv_quoting: bool) -> Iterator[tuple[int, int, bytes, bool]]:
    """(byte offset, line number, bytes, complete) of each record.

    A CSV record spans lines while a quoted cell is open (odd count of ``"``); a record is complete
    when it ends with a newline outside quotes.
    """
    offset, line_no, start, start_line, buffer = 0, 0, 0, 1, b""
    for line in handle:
        if not buffer:
            start, start_line = offset, line_no + 1
        buffer += line
        offset += len(line)
        line_no += 1
        open_quote = csv_quoting and buffer.count(b'"') % 2 == 1
        if open_quote and line.endswith(b"\n"):
            continue  # a newline inside a quoted cell
        yield start, start_line, buffer, line.endswith(b"\n") and not open_quote
        buffer = b""
    if buffer:
        yield start, start_line, buffer, False


def _read_journal(
    handle: IO[bytes], path: Path, fmt: Literal["jsonl", "csv"]
) -> tuple[list[Row], list[str] | None]:
    """The rows of an append-only file; a torn last record (no final newline) is cut away."""
    handle.seek(0)
    rows: list[Row] = []
    header: list[str] | None = None
    for start, line_no, data, complete in _records(handle, fmt == "csv"):
        if not complete:  # torn by a crash: always the last record
            if not _looks_ours(data, fmt, header):
                raise StoreError(f"{path}:{line_no}: not a captioner result file (torn record)")
            handle.truncate(start)
            break
        try:
            text = data.decode("utf-8")
            if not text.strip():
                continue
            if fmt == "jsonl":
                rows.append(Row.from_dict(json.loads(text)))
                continue
            cells = next(csv.reader([text.rstrip("\n")], strict=True))
            if header is None:
                if sorted(cells) != sorted(COLUMNS):
                    raise ValueError(f"columns {cells} are not {list(COLUMNS)}")
                header = cells
            else:
                rows.append(_csv_decode(cells, header))
        except (ValueError, TypeError, csv.Error) as exc:
            raise StoreError(
                f"{path}:{line_no}: not a valid result row ({exc}); "
                "give another --out, or --force to start over"
            ) from exc
    handle.seek(0, os.SEEK_END)
    return rows, header


def _looks_ours(torn: bytes, fmt: Literal["jsonl", "csv"], header: list[str] | None) -> bool:
    """A torn tail is cut only when it starts like a record this module writes."""
    if fmt == "jsonl":
        return torn.startswith(b'{"id": ') or b'{"id": '.startswith(torn)
    if header is not None:
        return True
    return _csv_line(list(COLUMNS)).startswith(torn)


# --- Parquet ------------------------------------------------------------------------------------


def _parquet_schema() -> Any:
    import pyarrow as pa

    text = pa.string()
    return pa.schema(
        [
            ("id", text), ("path", text), ("uri", text), ("sha256", text), ("caption", text),
            ("captions", pa.list_(pa.struct([("text", text), ("score", pa.float64())]))),
            ("model", pa.struct([("name", text), ("version", text)])),
            ("options", pa.struct([("beam_size", pa.int32()), ("max_length", pa.int32()),
                                   ("num_captions", pa.int32())])),
            ("status", text),
            ("error", pa.struct([("code", text), ("detail", text)])),
            ("width", pa.int32()), ("height", pa.int32()),
            ("timings_ms", pa.map_(text, pa.float64())),
        ]
    )  # fmt: skip


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"{path}: cannot read it as Parquet ({exc})") from exc
    for number, record in enumerate(records, start=1):
        if isinstance(record.get("timings_ms"), list):  # Arrow maps read back as pairs
            record["timings_ms"] = dict(record["timings_ms"])
        try:
            yield Row.from_dict(record)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{path} row {number}: not a valid result row ({exc})") from exc


def _write_parquet(tmp: Path, rows: dict[str, Row]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema()
    table = pa.Table.from_pylist([row.to_dict() for row in rows.values()], schema=schema)
    pq.write_table(table, tmp)
