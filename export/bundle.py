"""Assemble a model bundle (see ``service.manifest``) from Keras models, atomically.

The bundle is built in a hidden temporary folder beside the target: ONNX files, vocabulary, the
Keras decoder weights, the parity check (a failure aborts the export and leaves nothing behind),
the optional int8 encoder, and last the manifest with every file's sha256. Only then is the folder
renamed into place, so a reader never sees a half-written bundle. An existing bundle is replaced
only when ``force`` is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from service.manifest import (
    MANIFEST_FILE,
    DecoderSpec,
    EncoderSpec,
    FeatureRole,
    Manifest,
    Preprocessing,
    SpecialTokens,
    StateTensor,
    file_entry,
    load_manifest,
)
from service.vocabulary import Vocabulary

from .compact import round_weights_to_float16, store_file_float16
from .images import load_batch, train_head
from .onnx_export import DEFAULT_OPSET, export_encoder, export_step_decoder
from .parity import (
    DEFAULT_FEATURE_TOLERANCE,
    DEFAULT_LOGPROB_TOLERANCE,
    DecoderShape,
    check_parity,
)

ENCODER_FILE = "encoder.onnx"
ENCODER_INT8_FILE = "encoder.int8.onnx"
DECODER_FILE = "decoder.onnx"
VOCAB_FILE = "vocab.json"
KERAS_WEIGHTS_FILE = "decoder.keras.weights.h5"
ARCHITECTURE = "merge_lstm"


class BundleExistsError(FileExistsError):
    """The target folder exists and ``force`` was not given."""


@dataclass
class ExportSources:
    """Everything an export needs, whatever produced it (a training run or a test)."""

    encoder: Any
    """Keras model: normalised NHWC float32 -> dict role -> tensor."""
    encoder_name: str
    encoder_weights: str
    """Human-readable origin of the encoder weights."""
    preprocessing: Preprocessing
    feature_dim: int
    step_model: Any
    """Keras step decoder, see ``service.manifest.DecoderSpec``."""
    vocab: Vocabulary
    hidden_size: int
    max_length: int
    grid_size: int | None = None
    roles: tuple[FeatureRole, ...] = ("pooled",)
    training: dict[str, Any] = field(default_factory=dict)
    """Training config and final history figures, stored as ``manifest.training``."""
    keras_weights: Path | None = None
    """Decoder weights file copied into the bundle as ``decoder.keras.weights.h5``."""
    architecture: str = ARCHITECTURE
    """``DecoderSpec.architecture``, e.g. ``merge_lstm`` or ``attention_lstm``."""
    image_role: FeatureRole = "pooled"
    """Encoder output the step decoder reads: ``pooled`` (B, D), ``grid`` (B, N, D) or
    ``memory`` (B, N, ``image_dim``)."""
    image_dim: int | None = None
    """Width of the step decoder's image input when it is not ``feature_dim`` (``memory``)."""
    state_names: tuple[str, ...] = ("h", "c")
    """Recurrent state inputs of the step decoder; each has output ``<name>_out``."""
    attention: bool = False
    """The step decoder has an ``attention`` output (B, N)."""


@dataclass(frozen=True)
class ExportOptions:
    name: str
    version: str
    data_dir: Path
    force: bool = False
    opset: int = DEFAULT_OPSET
    parity_images: int = 8
    parity_batch_sizes: tuple[int, ...] = (1, 8)
    feature_tolerance: float = DEFAULT_FEATURE_TOLERANCE
    logprob_tolerance: float = DEFAULT_LOGPROB_TOLERANCE
    quantize: bool = False
    calibration_images: int = 200
    agreement_images: int = 100
    keras_weights: bool = True
    """Copy the run's Keras weights into the bundle (for the naive baseline and re-export);
    off keeps a served bundle small (the file also holds the optimizer state)."""
    decoder_weights: Literal["float32", "float16"] = "float32"
    """``float16``: round the step decoder's weights to float16 and store them so
    (``export.compact``): half the file, float32 arithmetic."""

    def __post_init__(self) -> None:
        if self.parity_images < max(self.parity_batch_sizes):
            raise ValueError(
                f"parity needs at least {max(self.parity_batch_sizes)} images "
                f"(the largest parity batch), got {self.parity_images}"
            )


@contextmanager
def _staging_dir(target: Path, force: bool) -> Iterator[Path]:
    """A temp folder beside ``target``, renamed onto it on success, removed on failure."""
    if target.exists() and not force:
        raise BundleExistsError(f"{target} exists; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _encoder_spec(src: ExportSources, outputs: dict[FeatureRole, str]) -> EncoderSpec:
    return EncoderSpec(
        name=src.encoder_name,
        file=ENCODER_FILE,
        outputs=outputs,
        feature_dim=src.feature_dim,
        grid_size=src.grid_size if {"grid", "memory"} & set(outputs) else None,
        preprocessing=src.preprocessing,
        weights=src.encoder_weights,
    )


def _decoder_spec(src: ExportSources) -> DecoderSpec:
    return DecoderSpec(
        architecture=src.architecture,
        file=DECODER_FILE,
        image_role=src.image_role,
        states=[
            StateTensor(input=name, output=f"{name}_out", size=src.hidden_size)
            for name in src.state_names
        ],
        attention_output="attention" if src.attention else None,
        hidden_size=src.hidden_size,
        vocab_size=len(src.vocab),
        max_length=src.max_length,
        special_tokens=SpecialTokens(
            pad=src.vocab.pad_id,
            start=src.vocab.start_id,
            end=src.vocab.end_id,
            unk=src.vocab.unk_id,
        ),
    )


def _toolchain(opset: int) -> dict[str, Any]:
    """Versions that produced the ONNX files, for reproducing an export."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, Any] = {"opset": opset}
    for package in ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def write_bundle(src: ExportSources, out: Path, options: ExportOptions) -> Path:
    """Export, check and write the bundle at ``out``; return ``out``."""
    out = Path(out)
    with _staging_dir(out, options.force) as stage:
        pre = src.preprocessing
        outputs = export_encoder(
            src.encoder,
            stage / ENCODER_FILE,
            height=pre.height,
            width=pre.width,
            roles=src.roles,
            opset=options.opset,
        )
        storage: dict[str, Any] = {}
        if options.decoder_weights == "float16":
            storage["rounded_values"] = round_weights_to_float16(src.step_model)
        export_step_decoder(
            src.step_model,
            stage / DECODER_FILE,
            hidden_size=src.hidden_size,
            feature_dim=src.image_dim or src.feature_dim,
            opset=options.opset,
            states=src.state_names,
            grid_size=src.grid_size if src.image_role in ("grid", "memory") else None,
            attention=src.attention,
        )
        if storage:
            storage["stored_float16_values"] = store_file_float16(stage / DECODER_FILE)
        src.vocab.save(stage / VOCAB_FILE)
        training = {**src.training, "export": _toolchain(options.opset)}
        if storage:
            training["decoder_weights"] = {
                "stored_as": "float16",
                "computed_in": "float32",
                **storage,
            }
        if src.keras_weights is not None and options.keras_weights:
            shutil.copyfile(src.keras_weights, stage / KERAS_WEIGHTS_FILE)
            training["keras_weights_file"] = KERAS_WEIGHTS_FILE

        shape = DecoderShape(
            hidden_size=src.hidden_size,
            max_length=src.max_length,
            start_id=src.vocab.start_id,
            end_id=src.vocab.end_id,
            image_role=src.image_role,
            state_names=src.state_names,
        )
        images = load_batch(train_head(options.data_dir, options.parity_images), pre)
        parity = check_parity(
            encoder=src.encoder,
            step_model=src.step_model,
            encoder_path=stage / ENCODER_FILE,
            decoder_path=stage / DECODER_FILE,
            encoder_outputs=outputs,
            images=images,
            shape=shape,
            batch_sizes=options.parity_batch_sizes,
            feature_tolerance=options.feature_tolerance,
            logprob_tolerance=options.logprob_tolerance,
        )

        encoder_spec = _encoder_spec(src, outputs)
        quantization: dict[str, Any] | None = None
        if options.quantize:
            from .quantize import quantize_bundle_encoder

            quantization = quantize_bundle_encoder(
                stage,
                encoder_file=ENCODER_FILE,
                int8_file=ENCODER_INT8_FILE,
                decoder_file=DECODER_FILE,
                outputs=outputs,
                shape=shape,
                preprocessing=pre,
                data_dir=options.data_dir,
                calibration_images=options.calibration_images,
                agreement_images=options.agreement_images,
            )
            encoder_spec = encoder_spec.model_copy(update={"int8_file": ENCODER_INT8_FILE})

        files = {
            p.name: file_entry(p)
            for p in sorted(stage.iterdir())
            if p.is_file() and p.name != MANIFEST_FILE
        }
        manifest = Manifest(
            name=options.name,
            version=options.version,
            encoder=encoder_spec,
            decoder=_decoder_spec(src),
            vocab_file=VOCAB_FILE,
            files=files,
            training=training,
            parity=parity,
            quantization=quantization,
        )
        _write_manifest_atomically(stage, manifest)
    return out


def _write_manifest_atomically(bundle_dir: Path, manifest: Manifest) -> None:
    tmp = bundle_dir / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, bundle_dir / MANIFEST_FILE)


def record_metrics(bundle_dir: Path, metrics: dict[str, Any]) -> Manifest:
    """Store evaluation results in an existing bundle's manifest (no other file changes)."""
    manifest = load_manifest(bundle_dir)
    updated = Manifest.model_validate(
        {**manifest.model_dump(), "metrics": {**manifest.metrics, **metrics}}
    )
    _write_manifest_atomically(Path(bundle_dir), updated)
    return updated
