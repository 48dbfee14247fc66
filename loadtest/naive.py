"""Bench phase (d): the naive baseline, ``python -m training.baseline`` in a subprocess.

The baseline is model code (Keras, the train extra), so the bench never imports it: it runs the
module when TensorFlow is importable, reads its JSON result, and compares its captions with the
ONNX model's greedy ones. Without the train extra the phase is skipped and the report says so.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.ceiling import greedy_captions

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE = "training.baseline"
TIMEOUT_S = 1800.0
"""A Keras prefix re-run per word takes seconds per image; this bounds a hung run."""


@dataclass(frozen=True)
class NaiveResult:
    skipped: str | None = None
    """Why the phase did not run (``None``: it ran)."""
    label: str = ""
    """What the baseline ran: Keras with whose weights, or the ONNX fallback."""
    images: int = 0
    seconds_per_image: list[float] = field(default_factory=list)
    mean_s: float = 0.0
    throughput: float | None = None
    """Images/s served one at a time: 1 / mean latency."""
    captions: list[str] = field(default_factory=list)
    service_captions: list[str] = field(default_factory=list)
    """The ONNX model's greedy captions for the same images."""
    captions_match: int = 0


def train_extra_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def naive_phase(bundle_dir: Path, images: list[Path]) -> NaiveResult:
    if not train_extra_installed():
        return NaiveResult(skipped="the train extra (TensorFlow) is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        cmd = [
            sys.executable, "-m", MODULE, "--bundle", str(bundle_dir), "--out", str(out),
            *map(str, images),
        ]  # fmt: skip
        done = subprocess.run(
            cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
        if done.returncode != 0 or not out.is_file():
            tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            print(done.stderr[-3000:], file=sys.stderr, flush=True)
            return NaiveResult(skipped=f"`python -m {MODULE}` failed: {tail[0]}")
        raw = json.loads(out.read_text())
    blobs = [path.read_bytes() for path in images]
    service = greedy_captions(bundle_dir, blobs)
    captions = [str(c) for c in raw["captions"]]
    return NaiveResult(
        label=str(raw["label"]),
        images=int(raw["images"]),
        seconds_per_image=[float(t) for t in raw["seconds_per_image"]],
        mean_s=float(raw["mean_s"]),
        throughput=float(raw["throughput"]),
        captions=captions,
        service_captions=service,
        captions_match=sum(a == b for a, b in zip(captions, service, strict=True)),
    )
