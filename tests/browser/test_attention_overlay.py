"""The page's attention overlay in headless Chromium, against the real app serving the tiny
attention bundle: hovering a word or moving the slider dims the image except where the model
looked for that word (driven by ``overlay.mjs`` with playwright-core; needs what
``test_web_page.py`` needs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import run_server

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CAPTIONER_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def attention_service(tiny_attention_bundle: Path) -> Iterator[str]:
    with run_server(tiny_attention_bundle, request_timeout_s=30.0) as server:
        yield server.url


def test_hover_and_slider_show_where_the_model_looked(
    attention_service: str, jpeg_path: Path, tmp_path: Path
) -> None:
    if not (HERE / "node_modules" / "playwright-core").is_dir() or shutil.which("node") is None:
        pytest.fail("needs node and `npm ci --prefix tests/browser` (.ci/run installs them)")
    shots = Path(os.environ.get("CAPTIONER_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    config = {
        "baseUrl": attention_service,
        "imagePath": str(jpeg_path),
        "screenshotDir": str(shots),
        "chromium": CHROMIUM,
    }
    done = subprocess.run(
        ["node", str(HERE / "overlay.mjs"), json.dumps(config)],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["consoleErrors"] == [] and report["unlabelled"] == []
    words = report["words"]
    assert len(words) >= 2, words
    assert report["sliderShown"] and report["sliderMax"] == len(words) - 1
    assert report["beforeHover"]["canvas"] is False

    hover = report["hover"]
    assert hover["word"] == "1" and hover["active"] == ["1"] and hover["coversImage"]
    # a real map: part of the image dimmed, the attended part left clear
    assert hover["dimmed"] > 0.05 * hover["pixels"] and hover["clear"] > 0, hover
    assert report["afterLeave"]["canvas"] is False and report["afterLeave"]["active"] == []

    last = str(len(words) - 1)
    slider = report["slider"]
    assert slider["word"] == last and slider["active"] == [last] and slider["canvas"]
    for name in ("attention-hover.png", "attention-slider.png"):
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
