"""Atomic checkpoints of a training run, shared by cross-entropy training and SCST.

A checkpoint is a folder ``<root>/<kind>-<number>/`` holding the model's weights
(``model.weights.h5``), the optimizer's variables (``optimizer.npz``), a copy of the run's best
weights so far, anything the caller adds, and ``state.json``, written last: a folder with
``state.json`` is complete. It is built under a temporary name and renamed into place, then the
older checkpoints of the same kind are removed, so a run killed at any moment keeps one whole
checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

STATE_FILE = "state.json"
MODEL_FILE = "model.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def latest(root: Path, kind: str) -> Path | None:
    """The newest complete checkpoint of ``kind`` under ``root`` (numbers are zero-padded)."""
    done = sorted(root.glob(f"{kind}-[0-9]*/{STATE_FILE}"))
    return done[-1].parent if done else None


def save(
    root: Path,
    kind: str,
    number: str,
    *,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    state: dict[str, Any],
    best_weights: Path,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint ``<kind>-<number>`` and drop the older ones of that kind."""
    final = root / f"{kind}-{number}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_weights(tmp / MODEL_FILE)
    np.savez(tmp / OPTIMIZER_FILE, *[keras.ops.convert_to_numpy(v) for v in optimizer.variables])
    if extra is not None:
        extra(tmp)
    if best_weights.exists():
        shutil.copy2(best_weights, tmp / best_weights.name)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))  # last: marks it complete
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in root.glob(f"{kind}-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def restore(
    ckpt: Path,
    *,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    best_weights: Path,
) -> dict[str, Any]:
    """Load ``ckpt`` into ``model`` and the (built) ``optimizer``, put its best weights back at
    ``best_weights``, and return its saved state."""
    model.load_weights(ckpt / MODEL_FILE)
    with np.load(ckpt / OPTIMIZER_FILE) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(optimizer.variables):
        raise ValueError(f"{ckpt}: optimizer state does not match the model")
    for variable, value in zip(optimizer.variables, values, strict=True):
        variable.assign(value)
    if (ckpt / best_weights.name).exists():
        shutil.copy2(ckpt / best_weights.name, best_weights)
    state: dict[str, Any] = json.loads((ckpt / STATE_FILE).read_text())
    return state
