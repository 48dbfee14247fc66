"""Bench phases (a) and (e): the offline in-process pipeline, the ceiling the service is held to.

Decode + resize + encode + greedy decode at each batch size, both as one pipeline on every core
and as single-threaded pipelines side by side (as the service runs its concurrent batches); the
ceiling is the best of all. Rounds interleave the batch sizes so noise hits them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.benchconfig import BenchConfig
from service.model import CaptionModel

OfflineRun = Callable[[], float]
"""One run of the offline pipeline in a fixed configuration: its images/s."""


@dataclass(frozen=True)
class OfflineRow:
    """One batch size in one layout: its best round and every round."""

    batch_size: int
    workers: int
    """1: one pipeline on every core; N: N single-threaded pipelines side by side."""
    throughput: float
    """End-to-end images/s (decode..caption), best round."""
    rounds: list[float]
    encoder_throughput: float | None = None
    """Encoder-only images/s, best round (measured for one pipeline only)."""


@dataclass(frozen=True)
class OfflineResult:
    int8: bool
    rows: list[OfflineRow]
    """One pipeline on every core, by batch size."""
    parallel_rows: list[OfflineRow]
    """Single-threaded pipelines side by side, by batch size (empty: not run)."""
    best: OfflineRow
    """The ceiling: the fastest row of either layout."""
    best_encoder: OfflineRow
    sample_captions: list[str]

    @property
    def best_encoder_throughput(self) -> float:
        return self.best_encoder.encoder_throughput or 0.0


def _caption_all(model: CaptionModel, blobs: list[bytes], batch_size: int) -> list[np.ndarray]:
    """Decode, encode and greedily caption ``blobs`` in batches; return the pixel batches."""
    request = model.request()
    arrays = []
    for i in range(0, len(blobs), batch_size):
        chunk = blobs[i : i + batch_size]
        x = np.stack([model.preprocess(b) for b in chunk])
        arrays.append(x)
        model.caption(model.encode(x), [request] * len(chunk))
    return arrays


def _end_to_end(
    model: CaptionModel, blobs: list[bytes], batch_size: int
) -> tuple[float, list[np.ndarray]]:
    """End-to-end images/s at one batch size, after a warm-up batch; and the pixel batches."""
    _caption_all(model, blobs[:batch_size], batch_size)  # warm-up
    start = time.perf_counter()
    arrays = _caption_all(model, blobs, batch_size)
    return len(blobs) / (time.perf_counter() - start), arrays


def _offline(model: CaptionModel, blobs: list[bytes], batch_size: int) -> tuple[float, float]:
    """End-to-end and encoder-only images/s at one batch size."""
    e2e, arrays = _end_to_end(model, blobs, batch_size)
    start = time.perf_counter()
    for x in arrays:
        model.encode(x)
    return e2e, len(blobs) / (time.perf_counter() - start)


def _side_by_side(models: list[CaptionModel], blobs: list[bytes], batch_size: int) -> float:
    """End-to-end images/s of one single-threaded pipeline per model, each on its share of
    ``blobs``, all at once (ONNX Runtime and image decoding release the GIL)."""
    shares = [blobs[i :: len(models)] for i in range(len(models))]
    for model, share in zip(models, shares, strict=True):
        _caption_all(model, share[:batch_size], batch_size)  # warm-up
    with ThreadPoolExecutor(max_workers=len(models)) as pool:
        start = time.perf_counter()
        runs = [
            pool.submit(_caption_all, m, share, batch_size)
            for m, share in zip(models, shares, strict=True)
        ]
        for run in runs:
            run.result()
        return len(blobs) / (time.perf_counter() - start)


def offline_rerun(bundle_dir: Path, blobs: list[bytes], best: OfflineRow) -> OfflineRun:
    """(a) again at its best configuration (batch size and layout), as often as asked."""
    size = best.batch_size
    if best.workers > 1:
        models = [CaptionModel.load(bundle_dir, intra_op_threads=1) for _ in range(best.workers)]
        return lambda: _side_by_side(models, blobs, size)
    model = CaptionModel.load(bundle_dir)
    return lambda: _end_to_end(model, blobs, size)[0]


def offline_phase(cfg: BenchConfig, blobs: list[bytes], *, use_int8: bool) -> OfflineResult:
    model = CaptionModel.load(cfg.bundle_dir, use_int8=use_int8)
    workers = [
        CaptionModel.load(cfg.bundle_dir, use_int8=use_int8, intra_op_threads=1)
        for _ in range(cfg.offline_workers if cfg.offline_workers > 1 else 0)
    ]
    e2e: dict[int, list[float]] = {size: [] for size in cfg.batch_sizes}
    enc: dict[int, list[float]] = {size: [] for size in cfg.batch_sizes}
    side: dict[int, list[float]] = {size: [] for size in cfg.batch_sizes}
    for _ in range(cfg.offline_rounds):  # rounds interleave the sizes: noise hits them alike
        for size in cfg.batch_sizes:
            whole, encoder = _offline(model, blobs, size)
            e2e[size].append(whole)
            enc[size].append(encoder)
            if workers:
                side[size].append(_side_by_side(workers, blobs, size))
    kind = "int8" if use_int8 else "fp32"
    rows: list[OfflineRow] = []
    parallel_rows: list[OfflineRow] = []
    for size in cfg.batch_sizes:
        row = OfflineRow(size, 1, max(e2e[size]), _rounded(e2e[size]), max(enc[size]))
        rows.append(row)
        line = f"  {kind} batch {size}: {row.throughput:.1f} img/s end to end"
        if workers:
            parallel_rows.append(
                OfflineRow(size, len(workers), max(side[size]), _rounded(side[size]))
            )
            line += f" ({len(workers)} x 1 thread: {parallel_rows[-1].throughput:.1f})"
        print(
            f"{line}, encoder {row.encoder_throughput:.1f} img/s (best of {cfg.offline_rounds})",
            flush=True,
        )
    sample = model.caption_images(
        np.stack([model.preprocess(b) for b in blobs[:3]]), [model.request()] * 3
    )
    return OfflineResult(
        int8=use_int8,
        rows=rows,
        parallel_rows=parallel_rows,
        best=max([*rows, *parallel_rows], key=lambda r: r.throughput),
        best_encoder=max(rows, key=lambda r: r.encoder_throughput or 0.0),
        sample_captions=[c[0].text for c in sample],
    )


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values]


def greedy_captions(bundle_dir: Path, blobs: list[bytes]) -> list[str]:
    """What the ONNX model says greedily for these images (to check the baseline's weights)."""
    model = CaptionModel.load(bundle_dir)
    x = np.stack([model.preprocess(b) for b in blobs])
    return [c[0].text for c in model.caption_images(x, [model.request()] * len(blobs))]
