"""A damaged or tampered bundle is never served.

``python -m service`` checks the bundle before it opens its port: it exits 2 with one line
naming the bundle and the reason (a Kubernetes pod then shows the reason in its last state and
never turns ready). When the app loads the bundle itself (``create_app`` without a model, e.g.
under another ASGI launcher), it stays up but ``/readyz`` answers 503 with the reason for as long
as it runs, caption requests get 503 ``not_ready``, and ``/healthz`` reports ``failed`` (500) so a
liveness probe restarts it. The tampered-decoder exit is also in tests/service/test_app_e2e.py.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.manifest import BundleError
from service.model import CaptionModel
from tests.polling import wait_until
from tests.service.conftest import run_process, run_server

pytestmark = pytest.mark.e2e


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    path.write_bytes(bytes(data))


def _edit_manifest(bundle: Path, edit: Callable[[dict[str, object]], object]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _drop_field(name: str) -> Callable[[dict[str, object]], object]:
    return lambda m: m.pop(name)


def _traversal(m: dict[str, object]) -> None:
    files = m["files"]
    assert isinstance(files, dict)
    files["../../etc/hostname"] = {"sha256": "0" * 64, "bytes": 1}


DAMAGE: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    "encoder hash mismatch": (lambda b: _flip_byte(b / "encoder.onnx"), ["encoder.onnx", "sha256"]),
    "vocab hash mismatch": (lambda b: _flip_byte(b / "vocab.json"), ["vocab.json", "sha256"]),
    "decoder truncated": (
        lambda b: (b / "decoder.onnx").write_bytes((b / "decoder.onnx").read_bytes()[:100]),
        ["decoder.onnx", "size"],
    ),
    "vocab missing": (lambda b: (b / "vocab.json").unlink(), ["vocab.json", "missing"]),
    "manifest missing": (lambda b: (b / "manifest.json").unlink(), ["manifest.json"]),
    "manifest not JSON": (
        lambda b: (b / "manifest.json").write_text("{not json"),
        ["invalid manifest"],
    ),
    "manifest not UTF-8": (
        lambda b: (b / "manifest.json").write_bytes(b"\xff\xfe{}"),
        ["invalid manifest"],
    ),
    "manifest without encoder": (
        lambda b: _edit_manifest(b, _drop_field("encoder")),
        ["invalid manifest", "encoder"],
    ),
    "manifest wrong format version": (
        lambda b: _edit_manifest(b, lambda m: m.update(format_version=99)),
        ["invalid manifest", "format_version"],
    ),
    "manifest file outside the bundle": (
        lambda b: _edit_manifest(b, _traversal),
        ["etc/hostname"],
    ),
}


def _damaged(tiny_bundle: Path, tmp_path: Path, name: str) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    DAMAGE[name][0](bundle)
    return bundle


@pytest.mark.parametrize("name", list(DAMAGE))
def test_loading_refuses_a_bad_bundle(tiny_bundle: Path, tmp_path: Path, name: str) -> None:
    bundle = _damaged(tiny_bundle, tmp_path, name)
    with pytest.raises(BundleError) as refused:
        CaptionModel.load(bundle, provider="cpu")
    for needle in DAMAGE[name][1]:
        assert needle in str(refused.value), refused.value


@pytest.mark.parametrize(
    "name", ["encoder hash mismatch", "manifest not UTF-8", "manifest without encoder"]
)
def test_process_exits_2_with_the_reason(tiny_bundle: Path, tmp_path: Path, name: str) -> None:
    bundle = _damaged(tiny_bundle, tmp_path, name)
    with run_process(bundle, tmp_path / "log.txt", ready=False) as proc:
        assert proc.process.wait(timeout=60) == 2, proc.log()
        log = proc.log()
    assert "cannot serve bundle" in log and str(bundle) in log
    for needle in DAMAGE[name][1]:
        assert needle in log, log
    assert "Traceback" not in log  # one clear line, not a stack


def test_in_app_load_stays_not_ready(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _damaged(tiny_bundle, tmp_path, "encoder hash mismatch")
    with run_server(bundle, wait=False) as running:  # the app loads (and refuses) the bundle
        url = running.url

        def failed() -> httpx.Response | None:
            health = httpx.get(f"{url}/healthz", timeout=2)
            return health if health.status_code == 500 else None

        health = wait_until(
            failed,
            what="/healthz reporting the failure",
            timeout=20,
            ignore=(httpx.TransportError,),
        )
        assert health.json()["status"] == "failed" and "encoder.onnx" in health.json()["detail"]
        for _ in range(5):  # and it stays that way (watched for half a second: no event to await)
            ready = httpx.get(f"{url}/readyz", timeout=2)
            assert ready.status_code == 503
            body = ready.json()
            assert body["code"] == "not_ready" and body["status"] == "failed"
            assert "encoder.onnx" in body["detail"] and "sha256" in body["detail"]
            r = httpx.post(
                f"{url}/caption", content=b"\xff\xd8", headers={"Content-Type": "image/jpeg"}
            )
            assert (r.status_code, r.json()["code"]) == (503, "not_ready")
            assert "encoder.onnx" in r.json()["detail"]
            time.sleep(0.1)
