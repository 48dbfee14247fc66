"""Shared fixtures: a clean CAPTION_* environment for every test, the shared Flickr8k data and
one real photo from it (``jpeg``, ``jpeg_path``), and the tiny test bundles.

The other shared helpers: ``tests/polling.py`` (waiting for a condition) and
``tests/service/conftest.py`` (a real server in a thread, ``run_server``, or in its own process,
``run_process``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("CAPTION_TEST_DATA_DIR", REPO_ROOT.parent / "shared/data/flickr8k")
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", help="also run the long variants marked 'slow'"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` tests are deselected (not skipped) unless ``--run-slow`` is given."""
    if config.getoption("--run-slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config.hook.pytest_deselected(items=slow)


@pytest.fixture(autouse=True)
def _clean_caption_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees CAPTION_* variables from the caller's shell."""
    for name in list(os.environ):
        if name.startswith("CAPTION_") and name != "CAPTION_TEST_DATA_DIR":
            monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(scope="session")
def flickr8k_dir() -> Path:
    """The shared Flickr8k folder (captions, splits, 224x224 images); never copied into the repo."""
    if not (SHARED_DATA / "Flickr8k.token.txt").is_file():
        pytest.fail(f"shared Flickr8k data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def jpeg_path(flickr8k_dir: Path) -> Path:
    """The test photo: the first Flickr8k JPEG by name (a real 224x224 photo)."""
    return sorted((flickr8k_dir / "images").glob("*.jpg"))[0]


@pytest.fixture(scope="session")
def jpeg(jpeg_path: Path) -> bytes:
    """The test photo's bytes (``jpeg_path``)."""
    return jpeg_path.read_bytes()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, manifest-valid bundle with tiny random ONNX graphs (see tests/tiny_bundle.py)."""
    from tests.tiny_bundle import build_tiny_bundle  # imports onnx: only when a test needs it

    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def tiny_attention_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_bundle`` with a grid encoder output and an attention decoder over it."""
    from tests.tiny_bundle import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-attention", attention=True)
