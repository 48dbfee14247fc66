"""What each local input's bytes hashed to, keyed by its size and modification time.

A rerun trusts a file whose (size, mtime_ns) are unchanged since it was hashed, as git's index
and rsync do, so a finished output is checked with one ``stat`` per input instead of reading
and hashing every image. The index is a cache: written atomically beside the output at the end of
a run (``<out>.index.json``); a missing, stale or unreadable index only means hashing again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

Signature = tuple[int, int]
"""(size in bytes, modification time in ns)."""


def index_path(out: Path) -> Path:
    return out.with_name(out.name + ".index.json")


def signature(path: str) -> Signature | None:
    """The file's (size, mtime_ns), or None when it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


class StatIndex:
    def __init__(self, path: Path, entries: dict[str, tuple[int, int, str]]) -> None:
        self.path = path
        self._entries = entries  # id -> (size, mtime_ns, sha256)

    @classmethod
    def empty(cls, out: Path) -> StatIndex:
        return cls(index_path(out), {})

    @classmethod
    def load(cls, out: Path) -> StatIndex:
        path = index_path(out)
        try:
            raw = json.loads(path.read_text())
            entries = {str(k): (int(v[0]), int(v[1]), str(v[2])) for k, v in raw.items()}
        except (OSError, ValueError, TypeError, IndexError, AttributeError):
            entries = {}
        return cls(path, entries)

    def known(self, item_id: str, sig: Signature | None) -> str | None:
        """The sha256 recorded for this input, if its file's signature is unchanged since."""
        entry = self._entries.get(item_id)
        if entry is None or sig is None or sig != entry[:2]:
            return None
        return entry[2]

    def record(self, item_id: str, sig: Signature | None, digest: str) -> None:
        if sig is not None:
            self._entries[item_id] = (sig[0], sig[1], digest)

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({k: list(v) for k, v in self._entries.items()}))
        os.replace(tmp, self.path)
