"""The result store: formats round-trip, resume reads earlier rows, kill -9 leaves a usable file."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch.rows import ErrorInfo, ModelInfo, Options, Row, resume_key
from batch.store import ResultStore, StoreError, journal_path
from service.errors import UnprocessableImage

FORMATS = ["out.jsonl", "out.ndjson", "out.csv", "out.parquet"]
MODEL = ModelInfo(name="lite0-lstm", version="1.0.0")
OPTIONS = Options(beam_size=3, max_length=20, num_captions=2)


def make_row(i: int, caption: str = "a dog runs through the grass") -> Row:
    return Row(
        id=f"photos/{i}.jpg", path=f"photos/{i}.jpg", sha256=f"{i:064x}", caption=caption,
        captions=[{"text": caption, "score": -0.41}, {"text": "a dog", "score": -0.5}],
        model=MODEL, options=OPTIONS, status="ok", width=224, height=224,
        timings_ms={"preprocess": 2.5, "encode": 9.75, "total": 21.0},
    )  # fmt: skip


def odd_rows() -> list[Row]:
    """Values that trip naive writers: unicode, quotes, commas, newlines, nulls."""
    failed = Row.failed(
        id='weird, "name"\nwith newline.jpg', uri="https://example.org/ü.jpg",
        error=UnprocessableImage("cannot identify image: 'x'\n<truncated>"), model=MODEL,
        options=OPTIONS,
    )  # fmt: skip
    return [make_row(0), make_row(1, caption='ein Hund "läuft" 🐶, <fast> & froh'), failed]


def read_back(path: Path) -> list[dict[str, object]]:
    """The file as another program sees it, without this package."""
    if path.suffix == ".parquet":
        return list(pq.read_table(path).to_pylist())
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", FORMATS)
def test_rows_round_trip(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    rows = odd_rows()
    with ResultStore.open(out, force=False) as store:
        for row in rows:
            store.append(row)

    reopened = ResultStore.open(out, force=False)
    assert [reopened.done(row.id) for row in rows] == rows
    assert list(reopened) == rows
    reopened.close()

    records = read_back(out)
    assert [r["id"] for r in records] == [row.id for row in rows]
    if name.endswith(".csv"):  # nested fields are JSON strings in their cells, null is empty
        assert json.loads(str(records[0]["model"])) == MODEL
        assert records[2]["caption"] == "" and json.loads(str(records[2]["error"]))["code"] == (
            "invalid_image"
        )
    else:
        assert records[1]["caption"] == 'ein Hund "läuft" 🐶, <fast> & froh'
        assert records[2]["error"] == ErrorInfo(
            code="invalid_image", detail="cannot identify image: 'x'\n<truncated>"
        )
    assert not journal_path(out).exists() or journal_path(out) == out


@pytest.mark.parametrize("name", FORMATS)
def test_retry_appends_and_compaction_keeps_latest_row_per_id(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    first = [make_row(0), Row.failed(id="b.jpg", path="b.jpg", error=UnprocessableImage("bad"),
                                     model=MODEL, options=OPTIONS), make_row(2)]  # fmt: skip
    store = ResultStore.open(out, force=False)
    for row in first:
        store.append(row)
    store.close(compact=False)

    store = ResultStore.open(out, force=False)
    failed = store.done("b.jpg")
    assert failed is not None and failed.status == "error"
    assert store.done("photos/2.jpg") == first[2] and store.done("nope.jpg") is None
    redone = Row(id="b.jpg", path="b.jpg", caption="a cat", model=MODEL, options=OPTIONS,
                 status="ok")  # fmt: skip
    store.append(redone)
    assert store.done("b.jpg") == redone
    store.close(compact=True)

    assert [r["id"] for r in read_back(out)] == ["photos/0.jpg", "b.jpg", "photos/2.jpg"]
    with ResultStore.open(out, force=False) as store:
        assert store.done("b.jpg") == redone


def test_resume_key_names_bytes_model_and_options() -> None:
    row = make_row(0)
    same = Row.from_dict(json.loads(json.dumps(row.to_dict())))
    other = Row.from_dict({**row.to_dict(), "options": {**OPTIONS, "beam_size": 1}})
    assert resume_key(row) == resume_key(same)
    assert resume_key(row) != resume_key(other)
    assert resume_key(row)[:3] == ("photos/0.jpg", f"{0:064x}", "1.0.0")


CHILD = """
import sys, time
from batch.store import ResultStore, journal_path
from tests.batch.test_store import make_row
out, k, torn = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "torn"
store = ResultStore.open(out, force=False, fsync_every_rows=1, fsync_every_s=0.0)
i = 0
while True:
    store.append(make_row(i, caption="x" * (i % 300)))
    i += 1
    if i == k:
        if torn:  # a record cut mid-write, as a kill during write() leaves it
            with open(journal_path(out), "ab") as f:
                f.write(b'{"id": "half' if not out.endswith(".csv") else b'half,,"open\\nquote')
        print("ready", flush=True)
        if torn:
            time.sleep(60)
"""


def kill_child_after(out: Path, k: int, mode: str) -> None:
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), str(k), mode],
        cwd=repo, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert child.stdout is not None
        child.stdout.close()


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.parquet"])
@pytest.mark.parametrize("mode", ["torn", "running"])
def test_kill_9_mid_write_keeps_complete_rows(tmp_path: Path, name: str, mode: str) -> None:
    out = tmp_path / name
    kill_child_after(out, 50, mode)
    journal = journal_path(out)
    assert journal.exists() and not (name.endswith(".parquet") and out.exists())

    store = ResultStore.open(out, force=False)
    ids = [row.id for row in store]
    assert ids == [f"photos/{i}.jpg" for i in range(len(ids))]  # every complete row, in order
    assert len(ids) == 50 if mode == "torn" else len(ids) >= 50
    assert journal.read_bytes().endswith(b"\n")  # the torn tail was cut away
    store.append(make_row(10_000))
    store.close()

    rows = read_back(out)
    assert [r["id"] for r in rows] == ids + ["photos/10000.jpg"]
    assert not (name.endswith(".parquet") and journal.exists())


def test_parquet_resume_merges_earlier_file_and_journal(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with ResultStore.open(out, force=False) as store:
        store.append(make_row(0))
    kill_child_after(out, 3, "torn")  # rewrites rows 0..2 into the journal, then dies

    store = ResultStore.open(out, force=False)
    assert [row.id for row in store] == [f"photos/{i}.jpg" for i in range(3)]
    assert store.done("photos/1.jpg") == make_row(1, caption="x")
    store.close()
    assert len(read_back(out)) == 3 and not journal_path(out).exists()


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.parquet"])
def test_force_moves_the_old_output_aside(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    with ResultStore.open(out, force=False) as store:
        store.append(make_row(0))
    before = out.read_bytes()

    with ResultStore.open(out, force=True) as store:
        assert len(store) == 0 and store.done("photos/0.jpg") is None
        store.append(make_row(1))

    assert out.with_name(name + ".bak").read_bytes() == before
    assert [r["id"] for r in read_back(out)] == ["photos/1.jpg"]


def test_foreign_or_corrupt_files_are_refused_and_left_alone(tmp_path: Path) -> None:
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"name": "mine"}\n{"name": "also mine"}')
    with pytest.raises(StoreError, match=r"notes\.jsonl:1: not a valid result row"):
        ResultStore.open(notes, force=False)
    table = tmp_path / "table.csv"
    table.write_text("a,b\n1,2\n")
    with pytest.raises(StoreError, match=r"table\.csv:1"):
        ResultStore.open(table, force=False)
    assert notes.read_text() == '{"name": "mine"}\n{"name": "also mine"}'
    assert table.read_text() == "a,b\n1,2\n"
    with pytest.raises(StoreError, match="unknown output format '.txt'"):
        ResultStore.open(tmp_path / "out.txt", force=False)


def test_one_writer_per_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with ResultStore.open(out, force=False):
        with pytest.raises(StoreError, match="another run"):
            ResultStore.open(out, force=False)
    ResultStore.open(out, force=False).close()


def test_an_exception_in_the_with_block_skips_compaction(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt), ResultStore.open(out, force=False) as store:
        store.append(make_row(0))
        raise KeyboardInterrupt
    assert not out.exists() and journal_path(out).exists()
    with ResultStore.open(out, force=False) as store:
        assert store.done("photos/0.jpg") == make_row(0)
