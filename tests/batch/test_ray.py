"""``captioner caption --engine ray`` on a local Ray cluster: the local job's rows, resumable.

One ``ray.init(num_cpus=2)`` for the module; 300 Flickr8k test images with corrupt and missing
files among them, captioned by models/default greedily.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch.cli import main
from batch.ray_job import COMPLETION, merge_runs, run_dirs
from batch.rows import Row
from tests.conftest import REPO_ROOT

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

IMAGES = 300
BAD = ("truncated.jpg", "not-an-image.jpg", "empty.jpg")
MISSING = ("gone/one.jpg", "gone/two.jpg")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(flickr8k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A list file: 300 test images, 3 broken files, 2 missing ones (305 inputs)."""
    folder = tmp_path_factory.mktemp("ray-inputs")
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:IMAGES]
    good = sorted((flickr8k_dir / "images").glob("*.jpg"))[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "not-an-image.jpg").write_bytes(b"plain text, not a JPEG\n" * 10)
    (folder / "empty.jpg").write_bytes(b"")
    lines = [str(flickr8k_dir / "images" / n) for n in names]
    lines[100:100] = [str(folder / n) for n in BAD] + [str(folder / n) for n in MISSING]
    listing = folder / "inputs.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def caption(*args: str) -> int:
    bundle = str(REPO_ROOT / "models/default")
    return main(["caption", *args, "--bundle-dir", bundle, "--beam-size", "1", "--quiet"])


def by_id(rows: list[Row]) -> dict[str, Row]:
    return {row.id: row for row in rows}


def test_ray_rows_equal_the_local_jobs_and_a_rerun_computes_only_what_is_missing(
    cluster: None, inputs: Path, tmp_path: Path
) -> None:
    lines = inputs.read_text().split()
    first_part = tmp_path / "first.txt"
    first_part.write_text("\n".join(lines[:120]) + "\n")
    out = tmp_path / "ray-out"
    ray_args = ["--out", str(out), "--engine", "ray", "--actors", "2:2", "--batch-size", "16"]

    # a job stopped after its first 120 inputs, then the whole job
    assert caption(str(first_part), *ray_args) == 0
    assert caption(str(inputs), *ray_args) == 0
    first, second = map(Path, run_dirs(out))
    assert len(json.loads((first / COMPLETION).read_text())["errors"]) == 3
    done = json.loads((second / COMPLETION).read_text())
    assert done["inputs"] == len(lines) and done["skipped"] == 120  # computed 185, not 305
    assert done["rows"] == len(lines) - 120

    local_out = tmp_path / "local.jsonl"
    assert caption(str(inputs), "--out", str(local_out)) == 0
    local = by_id([Row.from_dict(json.loads(line)) for line in local_out.read_text().splitlines()])
    merged = by_id(merge_runs(out))
    assert merged.keys() == local.keys() and len(merged) == len(lines)
    for item_id, row in local.items():
        other = merged[item_id]
        assert (other.status, other.caption, other.sha256) == (row.status, row.caption, row.sha256)
        assert (other.error or {}).get("code") == (row.error or {}).get("code")
        assert (other.width, other.height, other.model, other.options) == (
            row.width,
            row.height,
            row.model,
            row.options,
        )
    codes = sorted(r.error["code"] for r in local.values() if r.error)
    assert codes == sorted(
        ["invalid_image", "invalid_image", "empty_body"] + 2 * ["file_unreadable"]
    )


def test_a_new_run_never_overwrites_an_earlier_runs_shards(
    cluster: None, inputs: Path, tmp_path: Path
) -> None:
    few = tmp_path / "few.txt"
    few.write_text("\n".join(inputs.read_text().split()[:10]) + "\n")
    out = tmp_path / "out"
    args = ["--out", str(out), "--engine", "ray", "--actors", "1:2"]
    assert caption(str(few), *args) == 0
    shards = {p: p.read_bytes() for p in Path(run_dirs(out)[0]).glob("*.parquet")}
    assert caption(str(few), *args, "--force") == 0
    assert len(run_dirs(out)) == 2
    assert {p: p.read_bytes() for p in shards} == shards  # the earlier run is untouched
    assert len(merge_runs(out)) == 10
    shutil.rmtree(out)


def test_a_folder_is_read_by_ray_and_gives_the_local_jobs_rows(
    cluster: None, flickr8k_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    sources = sorted((flickr8k_dir / "images").glob("*.jpg"))[:12]
    for i, image in enumerate(sources):
        shutil.copy(image, folder / ("sub" if i % 3 else ".") / f"{i:02d}.JPG")
    (folder / "broken.jpg").write_bytes(sources[0].read_bytes()[:500])
    (folder / "notes.txt").write_text("not an image, not matched by the default patterns")
    monkeypatch.chdir(tmp_path)  # ids are the folder as given joined with the path below it
    assert caption("photos", "--out", "ray-out", "--engine", "ray", "--actors", "1:2") == 0
    assert caption("photos", "--out", "local.jsonl") == 0
    local = by_id(
        [Row.from_dict(json.loads(line)) for line in Path("local.jsonl").read_text().splitlines()]
    )
    merged = by_id(merge_runs("ray-out"))
    assert merged.keys() == local.keys() and len(local) == 13
    assert {k: (r.status, r.caption, r.error) for k, r in merged.items()} == {
        k: (r.status, r.caption, r.error) for k, r in local.items()
    }
    broken = merged[os.path.join("photos", "broken.jpg")]
    assert broken.error is not None and broken.error["code"] == "invalid_image"


def test_inputs_without_a_row_get_one(tmp_path: Path) -> None:
    from batch.ray_job import read_run_rows, reconcile
    from batch.sources import make_item

    model = {"name": "m", "version": "1"}
    options = {"beam_size": 1, "max_length": 5, "num_captions": 1}
    answered = Row(id="a.jpg", path="a.jpg", model=model, options=options, status="ok", caption="x")  # type: ignore[arg-type]
    items = [make_item("a.jpg"), make_item("b.jpg"), make_item("https://h/c.jpg")]
    added = reconcile(str(tmp_path), items, [answered], [], model, options)  # type: ignore[arg-type]
    assert [(r.id, r.error["code"] if r.error else None) for r in added] == [
        ("b.jpg", "not_processed"),
        ("https://h/c.jpg", "not_processed"),
    ]
    assert {r.id for r in read_run_rows(str(tmp_path))} == {"b.jpg", "https://h/c.jpg"}


def test_manifests_are_read_by_rays_readers_and_give_the_local_jobs_rows(
    cluster: None, flickr8k_dir: Path, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [str(p) for p in sorted((flickr8k_dir / "images").glob("*.jpg"))[20:29]]
    (tmp_path / "a.csv").write_text(
        "id,uri\n" + "".join(f"00{i},{u}\n" for i, u in enumerate(images[:3])) + "009,gone.jpg\n"
    )
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"uri": u}) + "\n" for u in images[3:6]))
    pq.write_table(pa.table({"uri": images[6:], "id": [70, 71, 72]}), tmp_path / "c.parquet")
    manifests = [str(tmp_path / n) for n in ("a.csv", "b.jsonl", "c.parquet")]
    assert caption(*manifests, "--out", str(tmp_path / "ray"), "--engine", "ray") == 0
    assert caption(*manifests, "--out", str(tmp_path / "local.jsonl")) == 0
    local_lines = (tmp_path / "local.jsonl").read_text().splitlines()
    local = by_id([Row.from_dict(json.loads(line)) for line in local_lines])
    merged = by_id(merge_runs(tmp_path / "ray"))
    assert sorted(merged) == sorted(local) and {"000", "009", "70"} <= merged.keys()
    assert {k: (r.status, r.caption, r.sha256) for k, r in merged.items()} == {
        k: (r.status, r.caption, r.sha256) for k, r in local.items()
    }
    assert merged["009"].error is not None and merged["009"].error["code"] == "file_unreadable"
