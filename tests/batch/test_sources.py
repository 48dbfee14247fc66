"""Inputs -> items: folders, lists, stdin, manifests; ids unique; nothing dropped silently."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.rows import FileUnreadable
from batch.sources import Item, SourceError, load_items, read_item_bytes
from service.errors import CaptionError, EmptyBody, PayloadTooLarge, UrlForbidden


@pytest.fixture(scope="module")
def images(flickr8k_dir: Path) -> list[Path]:
    return sorted((flickr8k_dir / "images").glob("*.jpg"))[:4]


def _ids(items: list[Item]) -> list[str]:
    return [item.id for item in items]


def test_folder_is_walked_recursively_sorted_case_insensitive(
    tmp_path: Path, images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos/b/deep").mkdir(parents=True)
    shutil.copy(images[0], tmp_path / "photos/b/deep/z.jpg")
    shutil.copy(images[1], tmp_path / "photos/b/A.JPG")
    shutil.copy(images[2], tmp_path / "photos/c.Jpeg")
    (tmp_path / "photos/notes.txt").write_text("not an image\n")
    (tmp_path / "photos/b/raw.cr2").write_bytes(b"raw")

    items = load_items(["photos/"])

    assert _ids(items) == ["photos/b/A.JPG", "photos/b/deep/z.jpg", "photos/c.Jpeg"]
    assert all(item.uri == item.id and not item.is_url for item in items)
    assert read_item_bytes(items[1], 10_000_000) == images[0].read_bytes()
    assert _ids(load_items(["photos"], patterns=["*.cr2"])) == [os.path.join("photos", "b/raw.cr2")]


def test_list_file_and_stdin_keep_every_entry(tmp_path: Path, images: list[Path]) -> None:
    listing = tmp_path / "inputs.txt"
    listing.write_text(
        f"# my images\n{images[0]}\n\n  https://example.org/a.jpg  \n"
        "HTTP://example.org/b.png\nftp://example.org/c.jpg\nfile:///etc/hosts\n"
        f"{tmp_path / 'missing.jpg'}\n"
    )
    items = load_items([str(listing)])
    assert [(i.uri, i.is_url, i.scheme) for i in items] == [
        (str(images[0]), False, None),
        ("https://example.org/a.jpg", True, "https"),
        ("HTTP://example.org/b.png", True, "http"),
        ("ftp://example.org/c.jpg", False, "ftp"),
        ("file:///etc/hosts", False, "file"),
        (str(tmp_path / "missing.jpg"), False, None),
    ]

    from_stdin = load_items(["-"], stdin=io.StringIO(f"{images[1]}\n# skipped\n"))
    assert _ids(from_stdin) == [str(images[1])]


def test_extensionless_text_file_is_a_list_and_unknown_binary_an_item(
    tmp_path: Path, images: list[Path]
) -> None:
    urls = tmp_path / "urls"
    urls.write_text("https://example.org/x.jpg\n")
    odd = tmp_path / "photo.heic"
    odd.write_bytes(images[0].read_bytes())

    items = load_items([str(urls), str(odd), str(tmp_path / "gone.png")])

    assert _ids(items) == ["https://example.org/x.jpg", str(odd), str(tmp_path / "gone.png")]


def test_csv_jsonl_and_parquet_manifests(tmp_path: Path, images: list[Path]) -> None:
    csv_file = tmp_path / "m.csv"
    csv_file.write_text(f"uri,id,extra\n{images[0]},first,x\nhttps://example.org/p.jpg,,y\n")
    jsonl = tmp_path / "m.ndjson"
    jsonl.write_text(
        json.dumps({"uri": str(images[1]), "id": "second"})
        + "\n\n"
        + json.dumps({"uri": "gs://b/k"})
    )
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": [7, 8], "uri": [str(images[2]), str(images[3])]}), parquet)

    items = load_items([str(csv_file), str(jsonl), str(parquet)])

    assert [(i.id, i.uri, i.is_url) for i in items] == [
        ("first", str(images[0]), False),
        ("https://example.org/p.jpg", "https://example.org/p.jpg", True),
        ("second", str(images[1]), False),
        ("gs://b/k", "gs://b/k", False),
        ("7", str(images[2]), False),
        ("8", str(images[3]), False),
    ]


@pytest.mark.parametrize("name", ["bad.csv", "bad.jsonl", "bad.parquet"])
def test_manifest_without_uri_column_names_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text("path,id\na.jpg,1\n")
    elif name.endswith(".jsonl"):
        path.write_text('{"path": "a.jpg"}\n')
    else:
        pq.write_table(pa.table({"path": ["a.jpg"]}), path)

    with pytest.raises(SourceError, match=rf"{name}.*'uri'"):
        load_items([str(path)])


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"uri": "a.jpg"}\n{"uri": \n')
    with pytest.raises(SourceError, match=r"m\.jsonl:2: not JSON"):
        load_items([str(path)])


def test_missing_list_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="inputs.txt"):
        load_items([str(tmp_path / "inputs.txt")])


def test_duplicate_ids_are_refused_with_examples(tmp_path: Path, images: list[Path]) -> None:
    listing = tmp_path / "l.txt"
    listing.write_text(f"{images[0]}\n{images[1]}\n")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,id\nhttps://example.org/1.jpg,{images[1]}\n")

    with pytest.raises(SourceError, match="2 id") as error:
        load_items([str(images[0]), str(listing), str(manifest)])
    assert str(images[0]) in str(error.value) and str(images[1]) in str(error.value)


def test_read_item_bytes_errors_carry_stable_codes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 101)
    cases: list[tuple[str, type[CaptionError], str]] = [
        (str(tmp_path / "missing.jpg"), FileUnreadable, "file_unreadable"),
        (str(tmp_path), FileUnreadable, "file_unreadable"),
        (str(empty), EmptyBody, "empty_body"),
        (str(big), PayloadTooLarge, "payload_too_large"),
        ("ftp://example.org/a.jpg", UrlForbidden, "url_forbidden"),
    ]
    for uri, error_type, code in cases:
        with pytest.raises(error_type) as error:
            read_item_bytes(Item(id=uri, uri=uri, is_url=False), max_bytes=100)
        assert error.value.code == code and uri in str(error.value)
    assert read_item_bytes(Item(id="b", uri=str(big), is_url=False), max_bytes=101) == b"x" * 101
