"""Bench phase (f): the encoder's FLOPs per image x its throughput, against the measured peak."""

from __future__ import annotations

from dataclasses import dataclass

from loadtest import flops
from loadtest.benchconfig import BenchConfig
from loadtest.ceiling import OfflineResult


@dataclass(frozen=True)
class Roofline:
    encoder_gflops_per_image: float
    encoder_macs_by_op: dict[str, int]
    encoder_uncounted_nodes: dict[str, int]
    decoder_mflops_per_step: float
    peak_gflops: float
    """The better of the NumPy and the ONNX Runtime matmul."""
    peak_gflops_numpy: float
    peak_gflops_onnxruntime: float
    encoder_achieved_gflops: float
    """At the encoder's best batch, encoder alone."""
    encoder_fraction_of_peak: float
    pipeline_encoder_fraction_of_peak: float
    """The encoder's share of peak at the whole offline pipeline's images/s."""


def peak_size(quick: bool) -> int:
    return 1024 if quick else 2048


def roofline_phase(cfg: BenchConfig, offline: OfflineResult, peak_before: float) -> Roofline:
    """FLOPs from the ONNX graphs; the peak is the best of two measurements (before and after
    the offline runs), since other processes on a shared machine can only lower it."""
    from service.manifest import load_manifest

    manifest = load_manifest(cfg.bundle_dir)
    enc = flops.count_macs(cfg.bundle_dir / manifest.encoder.file)
    dec = flops.count_macs(cfg.bundle_dir / manifest.decoder.file)
    size = peak_size(cfg.quick)
    numpy_peak = max(peak_before, flops.measure_peak_gflops(size, repeats=10))
    ort_peak = flops.measure_peak_gflops_ort(size)
    peak = max(numpy_peak, ort_peak)
    achieved = enc.flops * offline.best_encoder_throughput / 1e9
    return Roofline(
        encoder_gflops_per_image=enc.flops / 1e9,
        encoder_macs_by_op=enc.by_op,
        encoder_uncounted_nodes=enc.uncounted,
        decoder_mflops_per_step=dec.flops / 1e6,
        peak_gflops=peak,
        peak_gflops_numpy=numpy_peak,
        peak_gflops_onnxruntime=ort_peak,
        encoder_achieved_gflops=achieved,
        encoder_fraction_of_peak=achieved / peak,
        pipeline_encoder_fraction_of_peak=enc.flops * offline.best.throughput / 1e9 / peak,
    )
