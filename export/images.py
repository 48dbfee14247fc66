"""Real Flickr8k images for export checks (parity, int8 calibration, int8 agreement).

Images go through ``service.imaging`` so the checks see exactly what serving will feed. The
validation images are the last ones of the official train list, as training carves them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from service.imaging import preprocess_file_bytes
from service.manifest import Preprocessing

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}


def default_data_dir() -> Path:
    """``$CAPTION_DATA_DIR`` or ``<repo root>/../shared/data/flickr8k``."""
    env = os.environ.get("CAPTION_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "flickr8k"


def split_images(data_dir: Path, split: str = "train") -> list[Path]:
    """Existing image files of an official split, in the split file's order."""
    listing = Path(data_dir) / SPLIT_FILES[split]
    if not listing.is_file():
        raise FileNotFoundError(f"split file not found: {listing} (set --data-dir)")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    paths = [Path(data_dir) / "images" / name for name in names]
    return [p for p in paths if p.is_file()]


def train_head(data_dir: Path, count: int) -> list[Path]:
    """The first ``count`` train images (parity and calibration)."""
    paths = split_images(data_dir, "train")[:count]
    if len(paths) < count:
        raise FileNotFoundError(f"only {len(paths)} train images in {data_dir}, need {count}")
    return paths


def validation_tail(data_dir: Path, count: int) -> list[Path]:
    """The last ``count`` train images: held out from training as validation."""
    paths = split_images(data_dir, "train")[-count:]
    if len(paths) < count:
        raise FileNotFoundError(f"only {len(paths)} train images in {data_dir}, need {count}")
    return paths


def load_batch(paths: list[Path], spec: Preprocessing) -> np.ndarray:
    """Normalised encoder inputs (N, H, W, 3) float32 for ``paths``."""
    return np.stack([preprocess_file_bytes(p.read_bytes(), spec) for p in paths])
