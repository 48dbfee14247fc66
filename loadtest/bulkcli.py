"""Bench phase (g), its tool: one ``captioner caption`` run in a subprocess, timed from outside.

``run_caption(args)`` starts ``python -m batch.cli caption ARGS --quiet --summary-json S`` in the
repository root with no ``CAPTION_*`` variables but the ones given, waits for it and returns a
``CliRun``: the wall time of the whole command (interpreter start, imports, model load or Ray
cluster start, captioning, output closed) and what the command's own summary says (the job's
time, which starts once the engine is ready). With ``watch``, it also polls a Ray output folder
for the first Parquet shard. The command's output goes to a log whose tail a failure shows.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.05


class BulkCommandFailed(RuntimeError):
    """``captioner caption`` exited non-zero or wrote no summary."""


@dataclass(frozen=True)
class CliRun:
    label: str
    inputs: int
    done: int
    """Rows written this run (ok and error)."""
    errors: int
    skipped: int
    """Inputs an earlier run had answered."""
    wall_s: float
    """The whole command, from its start to its exit."""
    job_s: float
    """The job's time from its summary: in-process and ``--endpoint`` start it once the model is
    loaded and warm (or the service answered); Ray once the command's imports are done."""
    cpu_s: float = 0.0
    """CPU (user + system) of the command and of the children it reaped (not Ray's workers)."""
    first_output_s: float | None = None
    """Ray: when the run folder's first Parquet shard appeared, from the command's start."""

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000.0 * self.cpu_s / self.done if self.done else 0.0

    @property
    def job_rate(self) -> float:
        """Images/s of the job alone (the summary's ``images_per_s``): the steady-state rate."""
        return self.done / self.job_s if self.job_s > 0 else 0.0

    @property
    def wall_rate(self) -> float:
        """Images/s of the whole command, start-up included: what a user waits for."""
        return self.done / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def startup_s(self) -> float:
        """Wall time outside the job: interpreter, imports, model load and warm-up, exit."""
        return self.wall_s - self.job_s


def write_list(paths: list[Path], out: Path) -> Path:
    """A list input for ``captioner caption``: one absolute path a line."""
    out.write_text("".join(f"{p.resolve()}\n" for p in paths))
    return out


def caption_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTION_")}
    env |= {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    return env | (extra or {})


def run_caption(
    label: str,
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    watch: Path | None = None,
    timeout_s: float = 1800.0,
) -> CliRun:
    """``captioner caption ARGS`` once; raises ``BulkCommandFailed`` unless it exits 0."""
    work = Path(tempfile.mkdtemp(prefix="captioner-bulk-cmd-"))
    summary_path, log_path = work / "summary.json", work / "command.log"
    cmd = [sys.executable, "-m", "batch.cli", "caption", *args, "--quiet",
           "--summary-json", str(summary_path)]  # fmt: skip
    first: float | None = None
    before = _children_cpu_s()
    with log_path.open("wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=caption_env(env), stdout=log, stderr=subprocess.STDOUT
        )
        deadline = start + timeout_s
        while proc.poll() is None:
            if first is None and watch is not None and any(watch.glob("run-*/*.parquet")):
                first = time.perf_counter() - start
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
    cpu = _children_cpu_s() - before
    if first is None and watch is not None and any(watch.glob("run-*/*.parquet")):
        first = wall  # written in the last poll interval
    tail = log_path.read_text(errors="replace")[-3000:]
    if proc.returncode != 0 or not summary_path.is_file():
        raise BulkCommandFailed(f"{label}: exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    summary = json.loads(summary_path.read_text())
    summary_path.unlink()
    log_path.unlink()
    work.rmdir()
    errors = sum(summary["errors"].values())
    return CliRun(
        label=label,
        inputs=summary["inputs"],
        done=summary["ok"] + errors,
        errors=errors,
        skipped=summary["skipped"],
        wall_s=round(wall, 3),
        job_s=summary["seconds"],
        cpu_s=round(cpu, 3),
        first_output_s=None if first is None else round(first, 3),
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
