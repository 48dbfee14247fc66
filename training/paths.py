"""Where the training pipeline finds its data and keeps its caches, resolved from this file.

- data: ``$CAPTION_DATA_DIR`` or ``<repo root>/../shared/data/flickr8k``;
- cache: ``$CAPTION_CACHE_DIR`` or ``<repo root>/cache`` (git-ignored).

Command-line flags (``--data-dir``, ``--cache-dir``) override both; pass their value as
``explicit``. Nothing depends on the current working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "CAPTION_DATA_DIR"
CACHE_DIR_ENV = "CAPTION_CACHE_DIR"


def _resolve(explicit: str | os.PathLike[str] | None, env: str, default: Path) -> Path:
    if explicit is not None and str(explicit):
        return Path(explicit).expanduser().resolve()
    value = os.environ.get(env, "").strip()
    return Path(value).expanduser().resolve() if value else default.resolve()


def default_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The Flickr8k folder: ``explicit``, else ``$CAPTION_DATA_DIR``, else the shared copy."""
    return _resolve(explicit, DATA_DIR_ENV, REPO_ROOT.parent / "shared" / "data" / "flickr8k")


def default_cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The feature cache: ``explicit``, else ``$CAPTION_CACHE_DIR``, else ``<repo>/cache``."""
    return _resolve(explicit, CACHE_DIR_ENV, REPO_ROOT / "cache")
