"""Object storage URIs (``gs://bucket/key``) for inputs and Ray outputs, through pyarrow.

pyarrow's ``GcsFileSystem`` reads and writes Google Cloud Storage with the pod's credentials
(Workload Identity on GKE, ``gcloud auth application-default login`` elsewhere); no other
package is needed. Local paths go through the same calls (``LocalFileSystem``), which is how the
code is tested here: no bucket is reachable from CI.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from batch.rows import FileUnreadable
from service.errors import EmptyBody, PayloadTooLarge

if TYPE_CHECKING:
    import pyarrow.fs as pafs

STORAGE_SCHEMES = frozenset({"gs"})
"""URI schemes read as object storage (anything else but http(s) is refused as an input)."""


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``location`` (a local path or ``gs://...``) and the path in it."""
    import pyarrow.fs as pafs  # imported when used: the local job's start-up stays short

    if "://" in location:
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path
    return pafs.LocalFileSystem(), os.path.abspath(location)


def read_object(uri: str, max_bytes: int) -> bytes:
    """The bytes of a stored object, or the ``service.errors`` error naming what is wrong."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, path = filesystem(uri)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise FileUnreadable(f"{uri}: no such object")
        if info.size is not None and info.size > max_bytes:
            raise PayloadTooLarge(f"{uri}: {info.size} bytes, over {max_bytes}")
        with fs.open_input_stream(path) as stream:
            data: bytes = stream.read(max_bytes + 1)
    except (OSError, pa.ArrowException) as exc:
        raise FileUnreadable(f"{uri}: {exc}") from exc
    return checked_size(data, uri, max_bytes)


def checked_size(data: bytes, where: str, max_bytes: int) -> bytes:
    """``data`` read with one byte to spare: refused when over ``max_bytes`` or empty."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{where}: over {max_bytes} bytes")
    if not data:
        raise EmptyBody(f"{where}: empty")
    return data


def write_text(location: str, text: str) -> None:
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def make_dir(location: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)


def list_dirs(location: str, prefix: str) -> list[str]:
    """Sub-folders of ``location`` whose name starts with ``prefix``, as locations, sorted."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except (OSError, pa.ArrowException):
        return []
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)
    )
    return [join(location, name) for name in names]


def list_files(location: str, suffix: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return [join(location, n) for n in names if n.endswith(suffix)]


def join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}" if "://" in location else os.path.join(location, name)
