"""A rerun trusts a file whose size and modification time are unchanged since it was hashed."""

from __future__ import annotations

import os
from pathlib import Path

from batch.statindex import StatIndex, index_path, signature


def test_a_file_is_known_until_its_size_or_time_changes(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"first bytes")
    out = tmp_path / "out.jsonl"
    index = StatIndex.load(out)  # none yet: nothing known
    assert index.known("a", signature(str(image))) is None
    index.record("a", signature(str(image)), "d1")
    index.save()

    again = StatIndex.load(out)
    assert index_path(out).is_file()
    assert again.known("a", signature(str(image))) == "d1"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert again.known("a", signature(str(image))) is None  # touched: hashed again
    assert again.known("a", None) is None  # not stat-able: read (and fail) as usual
    assert again.known("b", signature(str(image))) is None


def test_an_unreadable_index_is_only_a_cache_miss(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    index_path(out).write_text("{not json")
    assert StatIndex.load(out).known("a", (1, 2)) is None
