"""``captioner caption`` end to end: the real process on real Flickr8k images and real files.

Inputs (folders, lists, stdin, manifests) and outputs (JSONL, CSV, Parquet); bad inputs, each an
error row with the API's code (local files, and URLs served by a real server on 127.0.0.1 under
the SSRF policy); resume (rerun, --retry-failed, --force, kill -9, SIGINT/SIGTERM); duplicates;
XMP sidecars read back with exiftool; captions equal to the service's for the same options; the
summary line and --summary-json. The tiny bundle (random captions) unless captions must be real.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.batch.conftest import (
    DEFAULT_BUNDLE,
    ROW_FIELDS,
    Cli,
    by_id,
    complete_lines,
    read_rows,
    summary_of,
    wait_for,
)
from tests.batch.hostile import UrlServer
from tests.service.conftest import run_server
from tests.service.images import png_bomb_header

LOOPBACK = {"CAPTION_URL_ALLOWLIST": "127.0.0.1"}
FAST_URL_TIMEOUTS = {
    "CAPTION_URL_CONNECT_TIMEOUT_S": "0.5",
    "CAPTION_URL_READ_TIMEOUT_S": "0.5",
    "CAPTION_URL_TOTAL_TIMEOUT_S": "1.0",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_images(sources: list[Path], folder: Path, names: list[str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [source.name for source in sources]
    return [Path(shutil.copy2(s, folder / n)) for s, n in zip(sources, names, strict=True)]


def truncated_jpeg(source: Path) -> bytes:
    return source.read_bytes()[: source.stat().st_size // 2]


def assert_ok_row(row: dict[str, Any], image: Path) -> None:
    """A captioned local image: every documented field, in order, with its value."""
    assert list(row) == ROW_FIELDS
    assert row["status"] == "ok" and row["error"] is None
    assert row["path"] == row["id"] and row["uri"] is None
    assert row["sha256"] == sha256(image)
    assert isinstance(row["caption"], str) and row["caption"].strip()
    assert set(row["model"]) == {"name", "version"} and row["model"]["version"]
    assert set(row["options"]) == {"beam_size", "max_length", "num_captions"}
    with Image.open(image) as opened:
        assert (row["width"], row["height"]) == opened.size
    assert row["timings_ms"]["total"] > 0


def assert_error_row(row: dict[str, Any], code: str) -> None:
    assert list(row) == ROW_FIELDS
    assert row["status"] == "error", row
    assert row["error"]["code"] == code, row["error"]
    assert row["error"]["detail"]
    assert row["caption"] is None and row["captions"] is None and row["timings_ms"] is None


# --- inputs and outputs -------------------------------------------------------------------------


def test_folder_is_walked_recursively_with_the_default_patterns(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    top = copy_images(flickr_images[:2], tmp_path / "album")
    deep = copy_images(flickr_images[2:4], tmp_path / "album/2019/summer")
    upper = copy_images(flickr_images[4:5], tmp_path / "album/2019", ["SHOUTING.JPG"])
    (tmp_path / "album/notes.txt").write_text("not an image\n")
    (tmp_path / "album/2019/old.xmp").write_text("<x/>")

    run = cli.run("album", "--out", "out.jsonl")

    assert run.returncode == 0, run.describe()
    rows = by_id(read_rows(tmp_path / "out.jsonl"))
    images = {str(p.relative_to(tmp_path)): p for p in top + deep + upper}
    assert set(rows) == set(images)
    for item_id, image in images.items():
        assert_ok_row(rows[item_id], image)
        assert rows[item_id]["captions"] is None  # n-best only when --num-captions > 1
        assert rows[item_id]["options"]["beam_size"] == 3  # CAPTION_DEFAULT_BEAM_SIZE
        assert rows[item_id]["options"]["num_captions"] == 1
    assert run.summary["ok"] == run.summary["inputs"] == 5


def test_list_file_and_stdin(cli: Cli, tmp_path: Path, flickr_images: list[Path]) -> None:
    images = copy_images(flickr_images[:4], tmp_path / "pics")
    listed = [str(p.relative_to(tmp_path)) for p in images[:2]]
    (tmp_path / "list.txt").write_text(f"# my picks\n{listed[0]}\n\n  {listed[1]}  \n")
    piped = [str(images[2]), str(images[3].relative_to(tmp_path))]  # absolute and relative

    run = cli.run("list.txt", "-", "--out", "out.jsonl", stdin="\n".join(piped) + "\n")

    assert run.returncode == 0, run.describe()
    rows = by_id(read_rows(tmp_path / "out.jsonl"))
    assert set(rows) == set(listed + piped)
    for image, item_id in zip(images, listed + piped, strict=True):
        assert_ok_row(rows[item_id], image)


def write_manifest(path: Path, records: list[dict[str, str | None]]) -> None:
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "uri", "label"])
            writer.writeheader()
            writer.writerows({**r, "label": "x", "id": r["id"] or ""} for r in records)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({**r, "label": "x"}) + "\n" for r in records))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{**r, "label": "x"} for r in records]), path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_with_uri_and_id(
    cli: Cli, tmp_path: Path, flickr_images: list[Path], suffix: str
) -> None:
    images = copy_images(flickr_images[:3], tmp_path / "data")
    records: list[dict[str, str | None]] = [
        {"id": "first", "uri": "data/" + images[0].name},
        {"id": "second", "uri": str(images[1])},
        {"id": None, "uri": "data/" + images[2].name},  # no id: the uri is the id
    ]
    write_manifest(tmp_path / f"manifest{suffix}", records)

    run = cli.run(f"manifest{suffix}", "--out", "out.jsonl")

    assert run.returncode == 0, run.describe()
    rows = by_id(read_rows(tmp_path / "out.jsonl"))
    assert set(rows) == {"first", "second", "data/" + images[2].name}
    for record, image in zip(records, images, strict=True):
        row = rows[record["id"] or str(record["uri"])]
        assert row["path"] == record["uri"]
        assert row["sha256"] == sha256(image) and row["status"] == "ok"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_output_format_follows_the_extension_with_n_best(
    cli: Cli, tmp_path: Path, flickr_images: list[Path], suffix: str
) -> None:
    images = copy_images(flickr_images[:3], tmp_path / "in")
    (tmp_path / "in/broken.jpg").write_bytes(b"\x00not a jpeg at all" * 10)
    out = tmp_path / f"results{suffix}"
    command = ("in", "--out", out.name, "--beam-size", "3", "--num-captions", "2")

    run = cli.run(*command)

    assert run.returncode == 0, run.describe()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("results")) == [
        out.name,  # Parquet: the journal is gone once the file is written
        f"{out.name}.index.json",  # the inputs' (size, mtime) -> sha256 cache for reruns
    ]
    rows = by_id(read_rows(out))
    assert len(rows) == 4
    for image in images:
        row = rows[f"in/{image.name}"]
        assert_ok_row(row, image)
        assert row["options"]["beam_size"] == 3 and row["options"]["num_captions"] == 2
        texts = [c["text"] for c in row["captions"]]
        scores = [c["score"] for c in row["captions"]]
        assert len(texts) == 2 and row["caption"] == texts[0]
        assert scores == sorted(scores, reverse=True)  # best first
    assert_error_row(rows["in/broken.jpg"], "invalid_image")
    assert rows["in/broken.jpg"]["sha256"] == sha256(tmp_path / "in/broken.jpg")

    again = cli.run(*command)  # each format resumes from its own rows

    assert again.returncode == 0, again.describe()
    assert again.summary["skipped"] == 4 and again.summary["ok"] == 0, again.summary
    assert by_id(read_rows(out)) == rows


# --- bad input never stops the run --------------------------------------------------------------


def test_bad_local_inputs_are_error_rows_with_their_codes(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    bad = tmp_path / "bad"
    copy_images(flickr_images[:1], bad, ["good.jpg"])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("this is a text file, not an image\n")
    (bad / "truncated.jpg").write_bytes(truncated_jpeg(flickr_images[1]))
    (bad / "bomb.png").write_bytes(png_bomb_header(100_000, 100_000))
    expected = {
        "bad/empty.jpg": "empty_body",
        "bad/notes.png": "invalid_image",
        "bad/truncated.jpg": "invalid_image",
        "bad/bomb.png": "image_too_large",
        "missing.jpg": "file_unreadable",
        "ftp://127.0.0.1/photo.jpg": "url_forbidden",
    }

    run = cli.run("bad", "missing.jpg", "ftp://127.0.0.1/photo.jpg", "--out", "out.jsonl")

    assert run.returncode == 0, run.describe()
    rows = by_id(read_rows(tmp_path / "out.jsonl"))
    assert set(rows) == set(expected) | {"bad/good.jpg"}
    assert_ok_row(rows["bad/good.jpg"], bad / "good.jpg")
    for item_id, code in expected.items():
        assert_error_row(rows[item_id], code)
    assert rows["ftp://127.0.0.1/photo.jpg"]["uri"] == "ftp://127.0.0.1/photo.jpg"
    assert rows["ftp://127.0.0.1/photo.jpg"]["path"] is None
    assert run.summary["ok"] == 1
    codes = list(expected.values())
    assert run.summary["errors"] == {code: codes.count(code) for code in codes}


def test_named_pipe_among_the_images_is_an_error_row_not_a_hang(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    (good,) = copy_images(flickr_images[:1], tmp_path / "in")
    os.mkfifo(tmp_path / "in/pipe.jpg")  # no writer ever comes: opening it blocks

    try:
        run = cli.run("in", "--out", "out.jsonl", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung on in/pipe.jpg (a FIFO) for 30 s")

    assert run.returncode == 0, run.describe()
    rows = by_id(read_rows(tmp_path / "out.jsonl"))
    assert_error_row(rows["in/pipe.jpg"], "file_unreadable")
    assert_ok_row(rows[f"in/{good.name}"], good)


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: a chmod 000 file is still readable")
def test_unreadable_file_is_an_error_row(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    locked, good = copy_images(flickr_images[:2], tmp_path / "in", ["locked.jpg", "good.jpg"])
    locked.chmod(0)
    try:
        run = cli.run("in", "--out", "out.jsonl")
    finally:
        locked.chmod(0o644)

    assert run.returncode == 0, run.describe()
    rows = by_id(read_rows(tmp_path / "out.jsonl"))
    assert_error_row(rows["in/locked.jpg"], "file_unreadable")
    assert_ok_row(rows["in/good.jpg"], good)


def test_urls_on_the_allowlist_are_fetched_and_failures_are_rows(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    image = flickr_images[0]
    with UrlServer({"dog.jpg": image.read_bytes()}) as server:
        urls = {
            server.url("/img/dog.jpg"): "ok",
            server.url("/img/gone.jpg"): "url_fetch_failed",  # 404
            server.url("/stall"): "url_timeout",
        }
        run = cli.run(*urls, "--out", "out.jsonl", env=LOOPBACK | FAST_URL_TIMEOUTS, timeout=60)

    assert run.returncode == 0, run.describe()
    rows = by_id(read_rows(tmp_path / "out.jsonl"))
    assert set(rows) == set(urls)
    for url, code in urls.items():
        assert rows[url]["uri"] == url and rows[url]["path"] is None
        if code != "ok":
            assert_error_row(rows[url], code)
    fetched = rows[server.url("/img/dog.jpg")]
    assert fetched["status"] == "ok" and fetched["caption"]
    assert fetched["sha256"] == sha256(image)
    assert run.summary["errors"] == {"url_fetch_failed": 1, "url_timeout": 1}


def test_private_url_is_refused_without_the_allowlist(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    with UrlServer({"dog.jpg": flickr_images[0].read_bytes()}) as server:
        url = server.url("/img/dog.jpg")
        run = cli.run(url, "--out", "out.jsonl")
        requests = list(server.requests)

    assert run.returncode == 0, run.describe()
    (row,) = read_rows(tmp_path / "out.jsonl")
    assert row["id"] == url
    assert_error_row(row, "url_forbidden")
    assert "loopback" in row["error"]["detail"]
    assert requests == []  # refused before connecting


def test_unusable_arguments_exit_2(cli: Cli, tmp_path: Path, flickr_images: list[Path]) -> None:
    (image,) = copy_images(flickr_images[:1], tmp_path)

    unknown_format = cli.run(image.name, "--out", "out.txt")
    same_id_twice = cli.run(image.name, image.name, "--out", "out.jsonl")

    assert unknown_format.returncode == 2 and "out.txt" in unknown_format.stderr
    assert same_id_twice.returncode == 2 and "more than once" in same_id_twice.stderr
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.txt").exists()


# --- resume -------------------------------------------------------------------------------------


def test_rerun_skips_everything_and_leaves_the_rows_unchanged(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    copy_images(flickr_images[:4], tmp_path / "in")
    (tmp_path / "in/broken.jpg").write_bytes(truncated_jpeg(flickr_images[4]))
    command = ("in", "missing.jpg", "--out", "out.jsonl")
    first = cli.run(*command)
    before = (tmp_path / "out.jsonl").read_bytes()

    again = cli.run(*command)

    assert first.returncode == again.returncode == 0, again.describe()
    assert first.summary["ok"] == 4 and sum(first.summary["errors"].values()) == 2
    assert again.summary["skipped"] == 6, again.summary
    assert again.summary["ok"] == 0 and again.summary["errors"] == {}
    assert (tmp_path / "out.jsonl").read_bytes() == before
    assert len(by_id(read_rows(tmp_path / "out.jsonl"))) == 6


def test_retry_failed_redoes_only_error_rows(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    good = copy_images(flickr_images[:3], tmp_path / "in")
    broken = tmp_path / "in/broken.jpg"
    broken.write_bytes(truncated_jpeg(flickr_images[3]))
    missing = tmp_path / "later.jpg"
    command = ("in", "later.jpg", "--out", "out.jsonl")
    cli.run(*command)
    ok_rows = {k: v for k, v in by_id(read_rows(tmp_path / "out.jsonl")).items() if v["caption"]}

    unfixed = cli.run(*command, "--retry-failed")

    assert unfixed.summary["skipped"] == 3, unfixed.summary  # the ok rows
    assert unfixed.summary["errors"] == {"invalid_image": 1, "file_unreadable": 1}

    shutil.copy2(flickr_images[3], broken)  # fix both between runs
    shutil.copy2(flickr_images[4], missing)
    fixed = cli.run(*command, "--retry-failed")

    assert fixed.returncode == 0, fixed.describe()
    assert fixed.summary["skipped"] == 3 and fixed.summary["ok"] == 2, fixed.summary
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    rows = by_id([json.loads(line) for line in lines])  # one line per input after the run
    assert len(rows) == 5
    for image in good:
        assert rows[f"in/{image.name}"] == ok_rows[f"in/{image.name}"]
    assert_ok_row(rows["in/broken.jpg"], broken)
    assert_ok_row(rows["later.jpg"], missing)


def test_force_recomputes_everything_and_keeps_the_old_output(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    copy_images(flickr_images[:3], tmp_path / "in")
    cli.run("in", "--out", "out.jsonl")
    old = (tmp_path / "out.jsonl").read_bytes()

    forced = cli.run("in", "--out", "out.jsonl", "--force")

    assert forced.returncode == 0, forced.describe()
    assert forced.summary["ok"] == 3 and forced.summary["skipped"] == 0, forced.summary
    assert (tmp_path / "out.jsonl.bak").read_bytes() == old
    assert len(by_id(read_rows(tmp_path / "out.jsonl"))) == 3


def test_kill_9_mid_run_loses_nothing_and_the_rerun_does_only_the_rest(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    images = copy_images(flickr_images[:200], tmp_path / "in")
    out = tmp_path / "out.jsonl"
    process, _ = cli.start("in", "--out", out.name, bundle=DEFAULT_BUNDLE)
    try:
        wait_for(lambda: complete_lines(out) >= 20 or process.poll() is not None, 120, "20 rows")
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    data = out.read_bytes()
    assert data.endswith(b"\n")
    before = by_id([json.loads(line) for line in data.splitlines()])
    assert 20 <= len(before) < 200
    first = data.split(b"\n", 1)[0]
    with out.open("ab") as f:  # a torn write: half a row, no newline
        f.write(first[: len(first) // 2])

    rerun = cli.run("in", "--out", out.name, bundle=DEFAULT_BUNDLE, timeout=170)

    assert rerun.returncode == 0, rerun.describe()
    assert rerun.summary["skipped"] == len(before), rerun.summary
    assert rerun.summary["ok"] == 200 - len(before)
    rows = by_id(read_rows(out))
    assert set(rows) == {f"in/{image.name}" for image in images}
    assert all(row["status"] == "ok" for row in rows.values())
    for item_id, row in before.items():
        assert rows[item_id] == row


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_intake_and_a_rerun_completes_the_rest(
    cli: Cli, tmp_path: Path, flickr_images: list[Path], sig: signal.Signals, code: int
) -> None:
    local = copy_images(flickr_images[:3], tmp_path / "in")
    remote = {f"p{i}.jpg": image.read_bytes() for i, image in enumerate(flickr_images[3:15])}
    env = LOOPBACK | {"CAPTION_MAX_BATCH_SIZE": "2", "CAPTION_MAX_CONCURRENT_BATCHES": "1"}
    out = tmp_path / "out.jsonl"
    with UrlServer(remote) as server:
        inputs = [str(p.relative_to(tmp_path)) for p in local]
        inputs += [server.url(f"/gated/{name}") for name in remote]
        (tmp_path / "inputs.txt").write_text("\n".join(inputs) + "\n")
        process, summary_path = cli.start("inputs.txt", "--out", out.name, env=env)
        try:
            # 4 inputs in flight (2 x batch 2): the 3 local rows written, 4 URL fetches held
            wait_for(lambda: complete_lines(out) >= 3 or process.poll() is not None, 60, "rows")
            server.wait_requests("/gated/", 4)
            process.send_signal(sig)
            server.open_gate()  # what was in flight finishes and is written
            process.wait(60)
        finally:
            process.kill()
            process.wait(30)
        interrupted = json.loads(summary_path.read_text())
        assert process.returncode == code, (tmp_path / f"{summary_path.stem}.log").read_text()
        assert interrupted["interrupted"] is True
        before = by_id([json.loads(line) for line in out.read_text().splitlines()])
        assert 3 <= len(before) < len(inputs)
        assert all(row["status"] == "ok" for row in before.values())

        rerun = cli.run("inputs.txt", "--out", out.name, env=env)

    assert rerun.returncode == 0, rerun.describe()
    assert rerun.summary["skipped"] == len(before), rerun.summary
    assert rerun.summary["ok"] == len(inputs) - len(before)
    rows = by_id(read_rows(out))
    assert set(rows) == set(inputs)
    assert all(row["status"] == "ok" for row in rows.values())


# --- duplicates and sidecars --------------------------------------------------------------------


def test_identical_bytes_are_captioned_once_but_each_input_has_its_row(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    twin = flickr_images[0]
    names = ["a.jpg", "b.jpg", "c.png", "d.jpg"]
    copy_images([twin, twin, twin, flickr_images[1]], tmp_path / "in", names)
    with run_server(cli.bundle) as server:
        run = cli.run("in", "--out", "out.jsonl", "--endpoint", server.url)
        posted = server.sample("caption_requests_total", {"endpoint": "/caption", "code": "200"})

    assert run.returncode == 0, run.describe()
    assert run.summary["duplicates"] == 2 and run.summary["ok"] == 4, run.summary
    assert posted == 2  # the service captioned two distinct images
    rows = by_id(read_rows(tmp_path / "out.jsonl"))
    assert len(rows) == 4
    same = [rows[f"in/{name}"] for name in ("a.jpg", "b.jpg", "c.png")]
    assert {row["sha256"] for row in same} == {sha256(twin)}
    assert len({row["caption"] for row in same}) == 1


def exiftool_caption(sidecar: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["exiftool", "-j", "-XMP-iptcCore:AltTextAccessibility", "-XMP-dc:Description", sidecar],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return dict(json.loads(result.stdout)[0])


needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool missing")


def snapshot(paths: list[Path]) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


@needs_exiftool
def test_xmp_sidecar_beside_each_image_and_images_unchanged(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    images = copy_images(flickr_images[:2], tmp_path / "in") + copy_images(
        flickr_images[2:3], tmp_path / "in/sub"
    )
    before = snapshot(images)

    run = cli.run("in", "--out", "out.jsonl", "--xmp-sidecar")

    assert run.returncode == 0, run.describe()
    rows = by_id(read_rows(tmp_path / "out.jsonl"))
    for image in images:
        row = rows[str(image.relative_to(tmp_path))]
        tags = exiftool_caption(image.with_suffix(".xmp"))
        assert tags["AltTextAccessibility"] == tags["Description"] == row["caption"]
    assert snapshot(images) == before
    assert sorted(p.name for p in (tmp_path / "in/sub").iterdir()) == [
        images[2].name,
        images[2].with_suffix(".xmp").name,
    ]


@needs_exiftool
def test_sidecar_dir_mirrors_the_tree(cli: Cli, tmp_path: Path, flickr_images: list[Path]) -> None:
    images = copy_images(flickr_images[:1], tmp_path / "in") + copy_images(
        flickr_images[1:2], tmp_path / "in/sub"
    )
    before = snapshot(images)

    run = cli.run("in", "--out", "out.jsonl", "--sidecar-dir", "meta")

    assert run.returncode == 0, run.describe()
    rows = by_id(read_rows(tmp_path / "out.jsonl"))
    for image in images:
        relative = image.relative_to(tmp_path)
        tags = exiftool_caption((tmp_path / "meta" / relative).with_suffix(".xmp"))
        assert tags["AltTextAccessibility"] == rows[str(relative)]["caption"]
    assert snapshot(images) == before
    assert not list((tmp_path / "in").rglob("*.xmp"))


@needs_exiftool
def test_sidecar_dir_for_images_outside_the_working_directory(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    """``captioner caption /data/photos --sidecar-dir meta`` run from elsewhere: the caption row
    stays ok and the sidecar lands under ``meta``."""
    (image,) = copy_images(flickr_images[:1], tmp_path / "photos")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()

    run = cli.run(tmp_path / "photos", "--out", "out.jsonl", "--sidecar-dir", "meta", cwd=workdir)

    assert run.returncode == 0, run.describe()
    (row,) = read_rows(workdir / "out.jsonl")
    assert row["status"] == "ok", row["error"]
    (sidecar,) = (workdir / "meta").rglob("*.xmp")
    assert sidecar.name == image.with_suffix(".xmp").name
    assert exiftool_caption(sidecar)["AltTextAccessibility"] == row["caption"]


@needs_exiftool
def test_images_sharing_a_sidecar_name_never_get_another_images_caption(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    """``a.jpg`` and ``a.png`` map to one ``a.xmp``: an ok row's sidecar holds its own caption;
    an input whose sidecar cannot be its own is reported (``sidecar_failed``), not silently
    overwritten."""
    copy_images(flickr_images[:2], tmp_path / "in", ["a.jpg", "a.png"])

    run = cli.run("in", "--out", "out.jsonl", "--xmp-sidecar")

    assert run.returncode == 0, run.describe()
    rows = read_rows(tmp_path / "out.jsonl")
    written = exiftool_caption(tmp_path / "in/a.xmp")["AltTextAccessibility"]
    for row in rows:
        if row["status"] == "ok":
            assert written == row["caption"], f"{row['id']}'s sidecar holds another caption"
        else:
            assert row["error"]["code"] == "sidecar_failed"


# --- the CLI and the service agree --------------------------------------------------------------


def service_answers(url: str, images: list[Path], beam: int, n: int) -> dict[str, Any]:
    """``POST /caption`` (raw bytes) for each image, keyed by the CLI's id for it."""
    answers = {}
    for image in images:
        response = httpx.post(
            f"{url}/caption",
            params={"beam_size": beam, "num_captions": n},
            content=image.read_bytes(),
            headers={"Content-Type": "image/jpeg"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        answers[f"in/{image.name}"] = response.json()
    return answers


def assert_rows_match_answers(rows: dict[str, Any], answers: dict[str, Any], n: int) -> None:
    assert set(rows) == set(answers)
    for item_id, answer in answers.items():
        row = rows[item_id]
        assert row["model"] == answer["model"]
        assert row["caption"] == answer["caption"], item_id
        assert row["options"]["num_captions"] == n
        if n == 1:
            assert row["captions"] is None
            continue
        assert [c["text"] for c in row["captions"]] == [c["text"] for c in answer["captions"]]
        assert [c["score"] for c in row["captions"]] == pytest.approx(
            [c["score"] for c in answer["captions"]], abs=1e-4
        )


@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["in-process", "endpoint"])
def test_captions_equal_the_services(
    cli: Cli, tmp_path: Path, flickr_images: list[Path], engine: str
) -> None:
    images = copy_images(flickr_images[:6], tmp_path / "in")
    with run_server(DEFAULT_BUNDLE, cache_size=0) as server:
        for beam, n in ((1, 1), (3, 2)):
            answers = service_answers(server.url, images, beam, n)
            out = f"{engine}-beam{beam}.jsonl"
            options = ["--beam-size", str(beam), "--num-captions", str(n)]
            if engine == "endpoint":
                options += ["--endpoint", server.url]
            run = cli.run("in", "--out", out, *options, bundle=DEFAULT_BUNDLE)

            assert run.returncode == 0, run.describe()
            rows = by_id(read_rows(tmp_path / out))
            assert all(row["options"]["beam_size"] == beam for row in rows.values())
            assert_rows_match_answers(rows, answers, n)


# --- progress and summary -----------------------------------------------------------------------


def test_summary_line_and_summary_json_hold_the_same_numbers(
    cli: Cli, tmp_path: Path, flickr_images: list[Path]
) -> None:
    same, other = flickr_images[:2]
    copy_images([same, same, other], tmp_path / "in", ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "in/empty.jpg").write_bytes(b"")
    (tmp_path / "in/text.jpg").write_text("hello\n")
    cli.run("in/c.jpg", "--out", "out.jsonl")

    run = cli.run("in", "--out", "out.jsonl")  # stdout is a pipe: no bar

    assert run.returncode == 0, run.describe()
    assert run.stdout.count("\n") == 1  # stdout holds the summary line only
    line = summary_of(run.stdout)
    expected: dict[str, Any] = {"ok": 2, "skipped": 1, "duplicates": 1, "inputs": 5}
    expected |= {"errors": {"empty_body": 1, "invalid_image": 1}, "interrupted": False}
    assert {k: run.summary[k] for k in expected} == expected
    assert {k: line[k] for k in expected} == expected
    assert line["error_total"] == 2
    assert line["images_per_s"] == pytest.approx(run.summary["images_per_s"], abs=0.06)
    for key in ("p50_ms", "p95_ms"):
        assert line[key] == pytest.approx(run.summary[key], abs=0.6)
    assert 0 < run.summary["p50_ms"] <= run.summary["p95_ms"]
    assert "\r" not in run.stderr and "img/s" not in run.stderr


def run_on_a_terminal(cli: Cli, *args: str) -> tuple[int, str, str]:
    """The CLI with stdout on a pseudo-terminal: (exit status, terminal output, stderr)."""
    command, _ = cli.command(*args)
    leader, follower = os.openpty()
    try:
        done = subprocess.run(
            command,
            cwd=cli.workdir,
            env=cli.environ(None),
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=120,
        )
        os.close(follower)
        follower = -1
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal is drained
            while chunk := os.read(leader, 65536):
                shown += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    return done.returncode, shown.decode(errors="replace"), done.stderr.decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_a_terminal_unless_quiet(
    cli: Cli, tmp_path: Path, flickr_images: list[Path], quiet: bool
) -> None:
    copy_images(flickr_images[:3], tmp_path / "in")

    code, terminal, stderr = run_on_a_terminal(
        cli, "in", "--out", "out.jsonl", *(["--quiet"] if quiet else [])
    )

    assert code == 0, stderr
    assert summary_of(terminal.strip().splitlines()[-1])["ok"] == 3
    drawn = "3/3" in stderr and "img/s" in stderr
    assert drawn is not quiet, stderr
