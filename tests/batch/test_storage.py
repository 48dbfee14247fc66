"""Object-storage URIs go through pyarrow's filesystems; ``file://`` URIs exercise the same path
that ``gs://`` takes on GKE (no bucket is reachable here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch import storage
from batch.rows import FileUnreadable
from batch.sources import Item, read_item_bytes
from service.errors import EmptyBody, PayloadTooLarge, UrlForbidden


def test_objects_are_read_with_the_api_errors(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 image bytes")
    (tmp_path / "empty.jpg").write_bytes(b"")
    uri = f"file://{tmp_path}"
    assert storage.read_object(f"{uri}/a.jpg", 100) == b"\xff\xd8 image bytes"
    with pytest.raises(FileUnreadable):
        storage.read_object(f"{uri}/missing.jpg", 100)
    with pytest.raises(EmptyBody):
        storage.read_object(f"{uri}/empty.jpg", 100)
    with pytest.raises(PayloadTooLarge):
        storage.read_object(f"{uri}/a.jpg", 4)


def test_run_folders_are_listed_and_written_through_uris(tmp_path: Path) -> None:
    out = f"file://{tmp_path}/captions"
    for name in ("run-2", "run-1", "other"):
        storage.make_dir(storage.join(out, name))
    storage.write_text(storage.join(out, "run-1/_completion.json"), "{}\n")
    assert storage.list_dirs(out, "run-") == [f"{out}/run-1", f"{out}/run-2"]
    assert storage.list_files(f"{out}/run-1", ".json") == [f"{out}/run-1/_completion.json"]
    assert (tmp_path / "captions/run-1/_completion.json").read_text() == "{}\n"
    assert storage.list_dirs(f"file://{tmp_path}/nothing-here", "run-") == []


def test_only_storage_schemes_are_read_as_inputs() -> None:
    with pytest.raises(UrlForbidden, match="ftp:"):
        read_item_bytes(Item(id="x", uri="ftp://host/x.jpg", is_url=False), 100)
    assert "gs" in storage.STORAGE_SCHEMES
