"""What a teacher bundle says about the training captions, for knowledge distillation.

The teacher is any served bundle (the shipped ensemble, ``models/default`` 2.1.0, by default of
``make model``), run through ONNX Runtime exactly as the service runs it. Two kinds of target:

* **soft targets** (word level): for every caption and every position, the teacher's next-word
  distribution given the reference prefix (teacher forcing), kept as its ``top_k`` most likely
  words and their probabilities. Top 8 of 2,429 words hold most of the mass at almost every
  step, and ``(captions, steps, 8)`` int16 ids + float16 probabilities take about 20 MB where the
  full distributions would take gigabytes;
* **teacher captions** (sequence level): the teacher's beam-search caption of each image, which
  training adds as one more reference of that image.

Both are cached under ``cache_dir/teacher/<key>.npz``, where the key hashes the bundle's files,
the images' names and the caption arrays, so ``make model`` computes them once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from service.model import CaptionModel

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump when the meaning of cached targets changes."""
IMAGE_BATCH = 32
"""Images encoded per encoder call."""
CAPTION_BATCH = 512
"""Captions teacher-forced per decoder call."""


@dataclass(frozen=True)
class SoftTargets:
    """The teacher's top-k next-word distribution at every position of every caption."""

    ids: NDArray[np.int16]
    """(captions, steps, k) word ids, most likely first; steps = caption length - 1."""
    probs: NDArray[np.float16]
    """(captions, steps, k) their probabilities (not renormalised); 0 past a caption's end."""

    @property
    def top_k(self) -> int:
        return int(self.ids.shape[-1])

    def mass(self) -> float:
        """Mean probability mass the kept words hold, over the real positions."""
        totals = self.probs.astype(np.float32).sum(-1)
        real = totals > 0
        return float(totals[real].mean()) if real.any() else 0.0


def load_teacher(bundle_dir: Path, vocab_tokens: Sequence[str]) -> CaptionModel:
    """Open ``bundle_dir``; its vocabulary must be the student's, word for word."""
    model = CaptionModel.load(Path(bundle_dir))
    if tuple(model.vocab.tokens) != tuple(vocab_tokens):
        raise ValueError(
            f"teacher {bundle_dir} has another vocabulary ({len(model.vocab)} words) than the "
            f"run ({len(vocab_tokens)}): distillation needs the same words in the same order"
        )
    if model.manifest.decoder.max_length < 2:
        raise ValueError(f"teacher {bundle_dir} has no room for a caption")
    return model


def encode_images(model: CaptionModel, paths: Sequence[Path]) -> NDArray[np.float16]:
    """The decoder's image input for each image (float16, to hold thousands in memory)."""
    role = model.manifest.decoder.image_role
    chunks: list[NDArray[np.float16]] = []
    with tqdm(total=len(paths), unit="img", desc="teacher encoder", file=sys.stderr) as bar:
        for start in range(0, len(paths), IMAGE_BATCH):
            batch = paths[start : start + IMAGE_BATCH]
            images = np.stack([model.preprocess(Path(p).read_bytes()) for p in batch])
            chunks.append(model.encode(images)[role].astype(np.float16))
            bar.update(len(batch))
    return np.concatenate(chunks)


def teacher_captions(
    model: CaptionModel,
    memory: NDArray[np.float16],
    max_length: int,
    *,
    beam_size: int = 3,
    length_penalty: float = 0.7,
) -> NDArray[np.int32]:
    """The teacher's best beam caption of each image as ``<start> words <end>`` ids, padded:
    int32 (images, max_length), the layout of ``training.vocab.encode_captions``."""
    spec = model.manifest.decoder.special_tokens
    request = model.request(beam_size=beam_size, length_penalty=length_penalty)
    role = model.manifest.decoder.image_role
    out = np.zeros((len(memory), max_length), np.int32)
    with tqdm(total=len(memory), unit="img", desc="teacher captions", file=sys.stderr) as bar:
        for start in range(0, len(memory), IMAGE_BATCH):
            chunk = memory[start : start + IMAGE_BATCH].astype(np.float32)
            results = model.caption({role: chunk}, [request] * len(chunk))
            for row, [best] in enumerate(results, start):
                seq = [spec.start, *best.tokens[: max_length - 2], spec.end]
                out[row, : len(seq)] = seq
            bar.update(len(chunk))
    return out


def soft_targets(
    model: CaptionModel,
    memory: NDArray[np.float16],
    rows: NDArray[np.int32],
    tokens: NDArray[np.int32],
    top_k: int,
) -> SoftTargets:
    """Teacher-force every caption (``tokens[i]`` of image ``rows[i]``) through the teacher's
    step decoder and keep its ``top_k`` next-word probabilities at each real position."""
    n, length = tokens.shape
    ids = np.zeros((n, length - 1, top_k), np.int16)
    probs = np.zeros((n, length - 1, top_k), np.float16)
    sizes = [s.size for s in model.manifest.decoder.states]
    with tqdm(total=n, unit="caption", desc="teacher targets", file=sys.stderr) as bar:
        for start in range(0, n, CAPTION_BATCH):
            seq = tokens[start : start + CAPTION_BATCH]
            image = memory[rows[start : start + CAPTION_BATCH]].astype(np.float32)
            states = [np.zeros((len(seq), size), np.float32) for size in sizes]
            steps = int((seq != 0).sum(1).max()) - 1
            for t in range(steps):
                out = model.step(seq[:, t], states, image)
                states = out.states
                p = np.exp(out.logprobs.astype(np.float32))
                best = np.argpartition(-p, top_k, axis=1)[:, :top_k]
                kept = np.take_along_axis(p, best, axis=1)
                order = np.argsort(-kept, axis=1)
                best = np.take_along_axis(best, order, axis=1)
                kept = np.take_along_axis(kept, order, axis=1)
                real = (seq[:, t + 1] != 0)[:, None]  # no target past <end>
                ids[start : start + len(seq), t] = np.where(real, best, 0)
                probs[start : start + len(seq), t] = np.where(real, kept, 0)
            bar.update(len(seq))
    return SoftTargets(ids, probs)


def cache_key(
    bundle_dir: Path, names: Sequence[str], arrays: Sequence[np.ndarray], **extra: object
) -> str:
    """Hash of what the targets depend on: the bundle's files, the images, the captions."""
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT, manifest.get("files"), extra], sort_keys=True).encode())
    digest.update("\n".join(names).encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:24]


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``path`` atomically (a killed run leaves no half-written cache entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Distillation:
    """Everything training needs from the teacher."""

    captions: NDArray[np.int32] | None
    """(train images, max_length) the teacher's caption per train image, or None."""
    train: SoftTargets
    """Soft targets of the train examples, teacher captions (if any) last."""


def distillation_targets(
    bundle_dir: Path,
    vocab_tokens: Sequence[str],
    image_paths: Sequence[Path],
    train: tuple[NDArray[np.int32], NDArray[np.int32]],
    *,
    top_k: int,
    with_captions: bool,
    cache_dir: Path,
) -> Distillation:
    """Teacher targets for the train examples ``(image row, tokens)`` over ``image_paths``
    (with ``with_captions``, one teacher caption per image is appended to the examples)."""
    rows, tokens = train
    names = [Path(p).name for p in image_paths]
    key = cache_key(bundle_dir, names, [rows, tokens], top_k=top_k, captions=with_captions)
    path = cache_dir / "teacher" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as saved:
            captions = saved["captions"] if with_captions else None
            log.info("teacher targets: cached %s", path)
            return Distillation(captions, SoftTargets(saved["ids"], saved["probs"]))
    model = load_teacher(bundle_dir, vocab_tokens)
    used = sorted(set(rows.tolist()))
    if used != list(range(len(used))):
        raise ValueError("train examples must use image rows 0..n-1")
    memory = encode_images(model, [image_paths[i] for i in used])
    captions = None
    if with_captions:
        captions = teacher_captions(model, memory, tokens.shape[1])
        rows = np.concatenate([rows, np.arange(len(captions), dtype=np.int32)])
        tokens = np.concatenate([tokens, captions])
    targets = soft_targets(model, memory, rows, tokens, top_k)
    extra = {} if captions is None else {"captions": captions}
    save_npz(path, ids=targets.ids, probs=targets.probs, **extra)
    log.info(
        "teacher targets: %d captions, top %d hold %.3f of the mass",
        len(rows),
        top_k,
        targets.mass(),
    )
    return Distillation(captions, targets)
