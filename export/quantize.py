"""Static int8 quantisation of the encoder, and what it costs and buys on this machine.

``quant_pre_process`` (shape inference and graph clean-up) then ``quantize_static`` in QDQ format,
per-channel int8 weights and int8 activations, min/max-calibrated on real train images fed
through ``service.imaging``. The measurement compares the int8 encoder with the fp32 one: ONNX
Runtime latency (2 intra-op threads, batch 8, median of repeated runs), cosine similarity of the
features, and agreement of greedy captions (same fp32 decoder) on held-out validation images.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from service.manifest import FeatureRole, Preprocessing

from .images import load_batch, train_head, validation_images
from .parity import DecoderShape, OnnxStep, greedy_tokens, ort_session

CALIBRATION_BATCH = 8


class ImageCalibrationReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds preprocessed images to the calibrator, ``batch`` at a time, loading lazily."""

    def __init__(self, paths: list[Path], spec: Preprocessing, batch: int = CALIBRATION_BATCH):
        chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
        self._batches: Iterator[list[Path]] = iter(
            tqdm(chunks, desc="int8 calibration", unit="batch", leave=False)
        )
        self._spec = spec

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._batches, None)
        return None if chunk is None else {"image": load_batch(chunk, self._spec)}


def quantize_encoder(
    fp32_path: Path, int8_path: Path, calibration: list[Path], spec: Preprocessing
) -> None:
    """Write a QDQ int8 copy of ``fp32_path`` calibrated on ``calibration`` images."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(int8_path),
            ImageCalibrationReader(calibration, spec),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def interleaved_latency_ms(
    paths: list[Path], images: np.ndarray, threads: int = 2, repeats: int = 20
) -> list[float]:
    """Median wall time of one ``session.run`` on ``images`` for each model in ``paths``.

    The models take turns run by run (after two warm-up runs each), so a machine whose load
    drifts during the measurement slows them alike.
    """
    sessions = [ort_session(path, threads=threads) for path in paths]
    feed = {"image": images}
    for session in sessions:
        for _ in range(2):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for session, samples in zip(sessions, times, strict=True):
            start = time.perf_counter()
            session.run(None, feed)
            samples.append((time.perf_counter() - start) * 1000.0)
    return [statistics.median(samples) for samples in times]


def _features(path: Path, output: str, images: np.ndarray, batch: int = 16) -> np.ndarray:
    session = ort_session(path)
    parts = [
        session.run([output], {"image": images[i : i + batch]})[0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts).astype(np.float32)


def compare_encoders(
    fp32_path: Path,
    int8_path: Path,
    decoder_path: Path,
    output: str,
    images: np.ndarray,
    shape: DecoderShape,
    *,
    threads: int = 2,
    batch: int = 8,
    repeats: int = 20,
) -> dict[str, Any]:
    """Speed, feature cosine and greedy caption agreement of int8 against fp32."""
    fp32 = _features(fp32_path, output, images)
    int8 = _features(int8_path, output, images)
    flat32, flat8 = fp32.reshape(len(fp32), -1), int8.reshape(len(int8), -1)  # one per image
    norms = np.linalg.norm(flat32, axis=1) * np.linalg.norm(flat8, axis=1)
    cosine = np.sum(flat32 * flat8, axis=1) / np.maximum(norms, 1e-12)
    step = OnnxStep(ort_session(decoder_path))
    same = [
        a == b
        for a, b in zip(
            greedy_tokens(step, fp32, shape), greedy_tokens(step, int8, shape), strict=True
        )
    ]
    timing_batch = np.resize(images, (batch, *images.shape[1:]))
    fp32_ms, int8_ms = interleaved_latency_ms(
        [fp32_path, int8_path], timing_batch, threads=threads, repeats=repeats
    )
    return {
        "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, int8 activations",
        "calibration": "min/max",
        "speed": {
            "threads": threads,
            "batch_size": batch,
            "repeats": repeats,
            "fp32_ms_median": round(fp32_ms, 3),
            "int8_ms_median": round(int8_ms, 3),
            "speedup": round(fp32_ms / int8_ms, 3),
            "cpu": cpu_name(),
            "onnxruntime": ort.__version__,
        },
        "agreement": {
            "images": len(images),
            "greedy_captions_identical_fraction": round(float(np.mean(same)), 4),
            "feature_cosine_mean": round(float(np.mean(cosine)), 6),
            "feature_cosine_min": round(float(np.min(cosine)), 6),
        },
    }


def quantize_bundle_encoder(
    bundle_dir: Path,
    *,
    encoder_file: str,
    int8_file: str,
    decoder_file: str,
    outputs: dict[FeatureRole, str],
    shape: DecoderShape,
    preprocessing: Preprocessing,
    data_dir: Path,
    calibration_images: int,
    agreement_images: int,
) -> dict[str, Any]:
    """Quantise ``bundle_dir/encoder_file`` into ``int8_file``; return the manifest record."""
    calibration = train_head(data_dir, calibration_images)
    quantize_encoder(bundle_dir / encoder_file, bundle_dir / int8_file, calibration, preprocessing)
    held_out = load_batch(validation_images(data_dir, agreement_images), preprocessing)
    report = compare_encoders(
        bundle_dir / encoder_file,
        bundle_dir / int8_file,
        bundle_dir / decoder_file,
        outputs[shape.image_role],
        held_out,
        shape,
    )
    report["calibration_images"] = len(calibration)
    return report
