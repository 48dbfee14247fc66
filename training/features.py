"""Encoder features for a list of images, computed once and cached on disk.

``extract_features`` encodes each image (decoded and normalised by ``service.imaging``, the
serving code path) and keeps the result under ``cache_dir/features/<key>/`` where ``key`` hashes
the encoder name, a fingerprint of its graph and weight values, the preprocessing and the role
(``pooled`` or ``grid``). Inside, rows are found by the sha256 of each image file's bytes, so a
rerun reads instead of computing, and an edited image or a different encoder misses.

Storage: append-only shards, each ``<id>.npy`` (rows, ...) float32 plus ``<id>.sha256`` (one hash
per row), both written to a temporary name and renamed, the hash list last: a shard exists only
once complete, so a killed run keeps every shard it finished (one every ``SHARD_ROWS`` images).

Compute: JPEG decoding runs in a thread pool a few batches ahead of the model. The default
backend converts the Keras encoder with tf2onnx once (kept in ``cache_dir/onnx/``) and runs ONNX
Runtime, several times faster on CPU than Keras; ``backend="keras"`` calls the model in a
``tf.function`` instead (no conversion, for small jobs and tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import keras
import numpy as np
from tqdm import tqdm

from service.imaging import load_rgb, normalise, resize_rgb
from service.manifest import Preprocessing
from training.encoders import DEFAULT_ENCODER, ENCODER_NAMES, ROLES, build_encoder, encoder_info
from training.paths import default_cache_dir, default_data_dir

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump when the meaning of cached rows changes, to invalidate every existing cache."""
SHARD_ROWS = 1024
"""Rows per shard: the most work a killed run can lose."""
ONNX_OPSET = 17
Backend = Literal["onnx", "keras"]
RunBatch = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass
class CacheStats:
    """What one ``extract_features`` call did."""

    images: int = 0
    """Images requested (duplicates included)."""
    hits: int = 0
    """Distinct images whose every role was already cached."""
    misses: int = 0
    """Distinct images encoded by this call."""
    seconds: float = 0.0
    """Wall time of the whole call."""
    keys: dict[str, str] = field(default_factory=dict)
    """Role -> cache key (folder name under ``features/``)."""


class Features(dict[str, np.ndarray]):
    """Role -> array aligned with the requested images, plus the call's ``stats``."""

    stats: CacheStats


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)


class _Shelf:
    """The shards of one cache key: content hash -> row."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._where: dict[str, tuple[Path, int]] = {}
        if folder.is_dir():
            for hashes_file in sorted(folder.glob("*.sha256")):
                rows_file = hashes_file.with_suffix(".npy")
                hashes = hashes_file.read_text().split()
                try:
                    rows = np.load(rows_file, mmap_mode="r")
                except (OSError, ValueError):
                    log.warning("ignoring unreadable shard %s", rows_file)
                    continue
                if rows.shape[0] != len(hashes):
                    log.warning("ignoring inconsistent shard %s", rows_file)
                    continue
                for i, digest in enumerate(hashes):
                    self._where.setdefault(digest, (rows_file, i))

    def __contains__(self, digest: object) -> bool:
        return digest in self._where

    def read(self, digests: Sequence[str], row_shape: tuple[int, ...]) -> np.ndarray:
        result = np.empty((len(digests), *row_shape), dtype=np.float32)
        by_file: dict[Path, list[tuple[int, int]]] = {}
        for out_row, digest in enumerate(digests):
            rows_file, row = self._where[digest]
            by_file.setdefault(rows_file, []).append((out_row, row))
        for rows_file, pairs in by_file.items():
            rows = np.load(rows_file, mmap_mode="r")
            if rows.shape[1:] != row_shape:
                raise ValueError(f"shard {rows_file} holds rows {rows.shape[1:]}, not {row_shape}")
            out_idx = np.array([p[0] for p in pairs])
            src_idx = np.array([p[1] for p in pairs])
            order = np.argsort(src_idx)  # sequential reads from the memory map
            result[out_idx[order]] = rows[src_idx[order]]
        return result

    def write(self, digests: Sequence[str], rows: np.ndarray) -> None:
        shard = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        rows_file = self.folder / f"{shard}.npy"
        data = np.ascontiguousarray(rows, dtype=np.float32)
        _atomic_write(rows_file, lambda p: _save_npy(p, data))
        _atomic_write_text(self.folder / f"{shard}.sha256", "\n".join(digests))
        for i, digest in enumerate(digests):
            self._where.setdefault(digest, (rows_file, i))


def _fingerprint(model: keras.Model) -> str:
    """sha256 over the encoder's architecture (Keras JSON) and every weight value."""
    digest = hashlib.sha256(model.to_json().encode())
    for weight in model.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{weight.path}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _cache_key(encoder: str, fingerprint: str, spec: Preprocessing, role: str) -> dict[str, object]:
    return {
        "format": CACHE_FORMAT,
        "encoder": encoder,
        "fingerprint": fingerprint,
        "preprocessing": spec.model_dump(mode="json"),
        "role": role,
    }


def _key_name(key: dict[str, object]) -> str:
    blob = json.dumps(key, sort_keys=True).encode()
    return f"{key['encoder']}-{key['role']}-{hashlib.sha256(blob).hexdigest()[:16]}"


def _keras_runner(model: keras.Model) -> RunBatch:
    import tensorflow as tf

    spec = model.input_shape
    call = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, *spec[1:]), tf.float32)],
    )

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        return {role: np.asarray(value) for role, value in call(batch).items()}

    return run


def _onnx_runner(model: keras.Model, fingerprint: str, cache_dir: Path) -> RunBatch:
    import onnxruntime as ort

    path = cache_dir / "onnx" / f"{fingerprint[:24]}.onnx"
    if not path.is_file():
        import tensorflow as tf
        import tf2onnx

        log.info("converting the encoder to ONNX once: %s", path)
        shape = model.input_shape
        signature = (tf.TensorSpec((None, *shape[1:]), tf.float32, name="image"),)
        proto, _ = tf2onnx.convert.from_function(
            tf.function(lambda image: model(image, training=False)),
            input_signature=signature,
            opset=ONNX_OPSET,
        )
        _atomic_write(path, lambda p: p.write_bytes(proto.SerializeToString()))
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(os.cpu_count() or 1, 8))
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [out.name for out in session.get_outputs()]
    if sorted(names) != sorted(ROLES):
        raise RuntimeError(f"ONNX encoder {path} outputs {names}, expected {list(ROLES)}")
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        values = session.run(names, {input_name: batch})
        return {name: np.asarray(v) for name, v in zip(names, values, strict=True)}

    return run


def _load_normalised(path: Path, spec: Preprocessing) -> np.ndarray:
    return normalise(resize_rgb(load_rgb(path.read_bytes()), spec), spec)


def _prefetched_batches(
    paths: Sequence[Path], spec: Preprocessing, batch_size: int, ahead: int = 2
) -> Iterator[np.ndarray]:
    """Normalised batches in order, decoded by a thread pool up to ``ahead`` batches early."""
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque[list[Future[np.ndarray]]] = deque()
        submitted = 0
        for _ in range(len(chunks)):
            while submitted < len(chunks) and len(pending) <= ahead:
                pending.append([pool.submit(_load_normalised, p, spec) for p in chunks[submitted]])
                submitted += 1
            yield np.stack([f.result() for f in pending.popleft()])


def extract_features(
    image_paths: Sequence[Path],
    *,
    encoder: str,
    weights: str | None,
    input_size: int | None = None,
    roles: Sequence[str] = ("pooled",),
    cache_dir: Path,
    batch_size: int = 32,
    backend: Backend = "onnx",
    progress: bool = True,
) -> Features:
    """Features of ``image_paths`` by role (arrays aligned with the paths), through the cache.

    ``encoder``/``weights``/``input_size`` are as in ``training.encoders.build_encoder``; ``roles``
    any of ``pooled`` (N, D) and ``grid`` (N, cells, D). The result's ``stats`` counts hits and
    misses. A missing image raises ``FileNotFoundError``, an undecodable one PIL's error.
    """
    start = time.perf_counter()
    roles = tuple(roles)
    paths = [Path(p) for p in image_paths]
    info = encoder_info(encoder, weights=weights, input_size=input_size)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise ValueError(f"roles must be among {ROLES}, got {roles}")
    # Always both heads: neither has weights, so the fingerprint (and the ONNX file) do not
    # depend on which roles this call stores.
    model = build_encoder(encoder, weights=weights, input_size=input_size, outputs=ROLES)
    fingerprint = _fingerprint(model)
    stats = CacheStats(images=len(paths))
    shelves: dict[str, _Shelf] = {}
    for role in roles:
        key = _cache_key(encoder, fingerprint, info.preprocessing, role)
        name = _key_name(key)
        stats.keys[role] = name
        folder = Path(cache_dir) / "features" / name
        if not (folder / "key.json").is_file():
            _atomic_write_text(
                folder / "key.json", json.dumps({**key, "weights": info.weights_desc})
            )
        shelves[role] = _Shelf(folder)

    unique = list(dict.fromkeys(digests))
    todo = [d for d in unique if not all(d in shelves[r] for r in roles)]
    stats.hits, stats.misses = len(unique) - len(todo), len(todo)
    if todo:
        first_path = {d: p for p, d in zip(paths, digests, strict=True)}
        _compute(
            [first_path[d] for d in todo],
            todo,
            info.preprocessing,
            model,
            fingerprint,
            roles,
            shelves,
            Path(cache_dir),
            batch_size,
            backend,
            progress,
        )
    row_shapes = {"pooled": (info.feature_dim,), "grid": (info.grid_size or 0, info.feature_dim)}
    result = Features({role: shelves[role].read(digests, row_shapes[role]) for role in roles})
    stats.seconds = time.perf_counter() - start
    result.stats = stats
    log.info(
        "features %s: %d images, %d cached, %d computed in %.1fs",
        encoder,
        stats.images,
        stats.hits,
        stats.misses,
        stats.seconds,
    )
    return result


def _compute(
    paths: list[Path],
    digests: list[str],
    spec: Preprocessing,
    model: keras.Model,
    fingerprint: str,
    roles: tuple[str, ...],
    shelves: dict[str, _Shelf],
    cache_dir: Path,
    batch_size: int,
    backend: Backend,
    progress: bool,
) -> None:
    if backend == "onnx":
        run = _onnx_runner(model, fingerprint, cache_dir)
    elif backend == "keras":
        run = _keras_runner(model)
    else:
        raise ValueError(f"backend must be 'onnx' or 'keras', got {backend!r}")
    pending: dict[str, list[np.ndarray]] = {role: [] for role in roles}
    done = flushed = 0

    def flush() -> None:
        nonlocal flushed
        for role in roles:
            shelves[role].write(digests[flushed:done], np.concatenate(pending[role]))
            pending[role].clear()
        flushed = done

    with tqdm(total=len(paths), unit="img", desc="encoding", disable=not progress) as bar:
        for batch in _prefetched_batches(paths, spec, batch_size):
            out = run(batch)
            for role in roles:
                pending[role].append(out[role].astype(np.float32, copy=False))
            done += len(batch)
            bar.update(len(batch))
            if done - flushed >= SHARD_ROWS:
                flush()
    if done > flushed:
        flush()


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Encode every Flickr8k image into the cache.")
    parser.add_argument("--data-dir", default=None, help="Flickr8k folder (with images/)")
    parser.add_argument("--cache-dir", default=None, help="feature cache folder")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, choices=ENCODER_NAMES)
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a file, or 'none'")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--roles", nargs="+", default=["pooled"], choices=["pooled", "grid"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backend", default="onnx", choices=["onnx", "keras"])
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    images = sorted((default_data_dir(args.data_dir) / "images").glob("*.jpg"))[: args.limit]
    features = extract_features(
        images,
        encoder=args.encoder,
        weights=None if args.weights == "none" else args.weights,
        input_size=args.input_size,
        roles=args.roles,
        cache_dir=default_cache_dir(args.cache_dir),
        batch_size=args.batch_size,
        backend=args.backend,
    )
    s = features.stats
    shapes = {role: array.shape for role, array in features.items()}
    print(
        f"{s.images} images: {s.hits} cached, {s.misses} computed, {s.seconds:.1f}s "
        f"({s.images / max(s.seconds, 1e-9):.1f} img/s overall); {shapes}; keys {s.keys}"
    )


if __name__ == "__main__":
    _main()
