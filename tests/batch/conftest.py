"""Helpers for the ``captioner caption`` tests: the real CLI process, its rows and its summary.

``cli`` runs ``python -m batch.cli caption ...`` in a folder (``tmp_path`` by default) with a
clean ``CAPTION_*`` environment plus what the test sets, and reads back ``--summary-json``;
``read_rows`` reads an output file the way a user would (JSONL, CSV with JSON cells, Parquet);
``flickr_images`` lists the real Flickr8k images.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

DEFAULT_BUNDLE = REPO_ROOT / "models/default"
ROW_FIELDS = [
    "id", "path", "uri", "sha256", "caption", "captions", "model", "options", "status", "error",
    "width", "height", "timings_ms",
]  # fmt: skip
NESTED = ("captions", "model", "options", "error", "timings_ms")
SUMMARY_LINE = re.compile(
    r"^(?P<ok>\d+) ok, (?P<errors>\d+) errors(?: \((?P<codes>[^)]*)\))?, "
    r"(?P<skipped>\d+) skipped, (?P<duplicates>\d+) duplicates of (?P<inputs>\d+) inputs "
    r"in (?P<seconds>[\d.]+) s: (?P<images_per_s>[\d.]+) images/s, "
    r"p50 (?P<p50_ms>\d+) ms, p95 (?P<p95_ms>\d+) ms(?P<interrupted> \(interrupted\))?$"
)


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any]
    """``--summary-json`` as written by the run ({} when it wrote none)."""

    def describe(self) -> str:
        return f"exit {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr[-4000:]}"


class Cli:
    """The real ``captioner caption`` process; every run writes its own ``--summary-json``."""

    def __init__(self, workdir: Path, bundle: Path) -> None:
        self.workdir = workdir
        self.bundle = bundle
        self._runs = itertools.count(1)

    def command(self, *args: str | Path, bundle: Path | None = None) -> tuple[list[str], Path]:
        summary = self.workdir / f".summary-{next(self._runs)}.json"
        command = [sys.executable, "-m", "batch.cli", "caption", *map(str, args)]
        command += ["--summary-json", str(summary)]
        if "--endpoint" not in args:
            command += ["--bundle-dir", str(bundle or self.bundle)]
        return command, summary

    def environ(self, env: dict[str, str] | None) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CAPTION_")}
        environ.update(env or {})
        return environ

    def run(
        self,
        *args: str | Path,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        cwd: Path | None = None,
        bundle: Path | None = None,
        timeout: float = 120.0,
    ) -> CliRun:
        command, summary_path = self.command(*args, bundle=bundle)
        done = subprocess.run(
            command,
            cwd=cwd or self.workdir,
            env=self.environ(env),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliRun(done.returncode, done.stdout, done.stderr, _load_summary(summary_path))

    def start(
        self,
        *args: str | Path,
        env: dict[str, str] | None = None,
        bundle: Path | None = None,
    ) -> tuple[subprocess.Popen[str], Path]:
        """The process running in the background (stdout/stderr to files in the workdir)."""
        command, summary_path = self.command(*args, bundle=bundle)
        log = (self.workdir / f"{summary_path.stem}.log").open("w")
        process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=self.environ(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        return process, summary_path


def _load_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def summary_of(line: str) -> dict[str, Any]:
    """The printed summary line as numbers (the same keys as ``--summary-json``)."""
    match = SUMMARY_LINE.match(line.strip())
    assert match, f"not a summary line: {line!r}"
    parts = [part.rsplit(" ", 1) for part in (match["codes"] or "").split(", ") if part]
    errors = {code: int(n) for code, n in parts}
    return {
        **{k: int(match[k]) for k in ("ok", "skipped", "duplicates", "inputs")},
        "error_total": int(match["errors"]),
        "errors": errors,
        **{k: float(match[k]) for k in ("seconds", "images_per_s", "p50_ms", "p95_ms")},
        "interrupted": match["interrupted"] is not None,
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a result file, nested fields as Python values, empty CSV cells as None."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        for row in rows:
            if isinstance(row["timings_ms"], list):  # Arrow maps read back as pairs
                row["timings_ms"] = dict(row["timings_ms"])
        return rows
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
        return [
            {
                key: None
                if cell == ""
                else json.loads(cell)
                if key in NESTED
                else int(cell)
                if key in ("width", "height")
                else cell
                for key, cell in record.items()
            }
            for record in records
        ]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows keyed by id; fails when an id occurs twice."""
    keyed = {row["id"]: row for row in rows}
    assert len(keyed) == len(rows), f"repeated ids: {[r['id'] for r in rows]}"
    return keyed


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.01)


def complete_lines(path: Path) -> int:
    """Newline-terminated lines in ``path`` (0 when it does not exist yet)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture
def cli(tmp_path: Path, tiny_bundle: Path) -> Cli:
    """The CLI in ``tmp_path`` on the tiny bundle (``bundle=`` picks another)."""
    return Cli(tmp_path, tiny_bundle)


@pytest.fixture(scope="session")
def flickr_images(flickr8k_dir: Path) -> list[Path]:
    """Real Flickr8k JPEGs in a stable order."""
    return sorted((flickr8k_dir / "images").glob("*.jpg"))
