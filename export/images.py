"""Real Flickr8k images for export checks (parity, int8 calibration, int8 agreement).

Images are listed by ``training.data`` (official split order, files on disk) and go through
``service.imaging``, so the checks see exactly what serving will feed. Parity and calibration use
the head of the train list; int8 agreement uses the validation images training holds out
(``training.data.train_val_split``), never seen by calibration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.imaging import preprocess_file_bytes
from service.manifest import Preprocessing
from training.data import image_dir, load_split, train_val_split


def train_head(data_dir: Path, count: int) -> list[Path]:
    """The first ``count`` train images (parity and calibration)."""
    names = load_split(data_dir, "train")[:count]
    if len(names) < count:
        raise FileNotFoundError(f"only {len(names)} train images in {data_dir}, need {count}")
    return [image_dir(data_dir) / name for name in names]


def validation_images(data_dir: Path, count: int, val_size: int = 500) -> list[Path]:
    """Up to ``count`` of the validation images held out from training."""
    _, val = train_val_split(load_split(data_dir, "train"), val_size)
    return [image_dir(data_dir) / name for name in val[:count]]


def load_batch(paths: list[Path], spec: Preprocessing) -> np.ndarray:
    """Normalised encoder inputs (N, H, W, 3) float32 for ``paths``."""
    return np.stack([preprocess_file_bytes(p.read_bytes(), spec) for p in paths])
