"""The web page at ``GET /`` in headless Chromium, against the real app on a real uvicorn server.

Needs Debian ``chromium`` and ``npm ci --prefix tests/browser`` (both done by ``.ci/run``): the
page is driven by ``drive.mjs`` with playwright-core using ``/usr/bin/chromium``. The test uploads
a shared Flickr8k image through the page, sees its caption (also as the image's alt text), the
n-best list and timings; captions a URL served by a local allow-listed server; and shows the
``url_forbidden`` error for a loopback URL that is not allow-listed. Screenshots go to a temp dir
(``CAPTIONER_SCREENSHOT_DIR`` keeps them somewhere else).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.service.conftest import run_server

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CAPTIONER_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def image_server(jpeg: bytes) -> Iterator[str]:
    """A plain local HTTP server with one JPEG at /img.jpg (the URL the page asks to caption)."""
    body = jpeg

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/img.jpg":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def service_url(tiny_bundle: Path, image_server: str) -> Iterator[str]:
    """The real app (``service.app.create_app``) on uvicorn in a thread, ready before yielding."""
    image_port = int(image_server.rsplit(":", 1)[1])
    with run_server(
        tiny_bundle,
        url_allowlist=f"127.0.0.1:{image_port}",
        warmup_batch_sizes=(1,),
        max_batch_size=4,
        log_json=False,
    ) as running:
        yield running.url


@pytest.fixture(scope="module")
def node_modules() -> Path:
    folder = HERE / "node_modules" / "playwright-core"
    if not folder.is_dir() or shutil.which("node") is None or not Path(CHROMIUM).exists():
        pytest.fail(
            "browser test needs node, /usr/bin/chromium and `npm ci --prefix tests/browser` "
            "(.ci/run installs them)"
        )
    return folder


def test_web_page_uploads_and_captions(
    service_url: str,
    image_server: str,
    jpeg_path: Path,
    node_modules: Path,
    tmp_path: Path,
) -> None:
    shots = Path(os.environ.get("CAPTIONER_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # a loopback port that is NOT allow-listed
    config = {
        "baseUrl": service_url,
        "imagePath": str(jpeg_path),
        "imageUrl": f"{image_server}/img.jpg",
        "forbiddenUrl": f"http://127.0.0.1:{listener.getsockname()[1]}/secret.jpg",
        "screenshotDir": str(shots),
        "chromium": CHROMIUM,
    }
    try:
        done = subprocess.run(
            ["node", str(HERE / "drive.mjs"), json.dumps(config)],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["title"] == "Captioner"
    assert report["unlabelled"] == [] and report["externalAssets"] == []
    assert report["firstTabStop"] == "file"
    assert report["consoleErrors"] == []

    upload = report["steps"]["upload"]
    assert upload["caption"].strip() and upload["alt"] == upload["caption"]
    assert upload["imageLoaded"] and upload["errorHidden"]
    assert 1 <= len(upload["nbest"]) <= 3 and all("score" in item for item in upload["nbest"])
    assert any(row.startswith("Total") for row in upload["timings"])
    assert upload["meta"].startswith("Model tiny ") and "request " in upload["meta"]

    by_url = report["steps"]["url"]
    assert by_url["caption"].strip() and by_url["imageLoaded"]
    assert by_url["src"] == config["imageUrl"] and len(by_url["nbest"]) == 1

    forbidden = report["steps"]["forbidden"]
    assert "url_forbidden" in forbidden["error"] and forbidden["role"] == "alert"

    for name in ("upload.png", "error.png"):
        png = shots / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
