"""The chart's initContainer downloader (deploy/helm/captioner/files/fetch_bundle.py), run as the
pod runs it: a subprocess fetching a real bundle archive from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.manifest import load_manifest, verify_files
from tests.deploy.conftest import CHART, REPO_ROOT

pytestmark = pytest.mark.deploy

SCRIPT = CHART / "files" / "fetch_bundle.py"


class Server:
    """Serves files from a folder and counts GET requests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.hits += 1
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    served = tmp_path / "served"
    served.mkdir()
    srv = Server(served)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def archive(bundle: Path, out: Path, top: str | None = "bundle-0.1.0") -> str:
    """tar.gz of the bundle folder (inside `top`, or at the root); returns its sha256."""
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(bundle.iterdir()):
            tar.add(path, arcname=f"{top}/{path.name}" if top else path.name)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def fetch(url: str, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--url", url, "--dest", str(dest), "--timeout", "30", *extra],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def test_downloads_verifies_and_installs_the_bundle(
    server: Server, tiny_bundle: Path, tmp_path: Path
) -> None:
    digest = archive(tiny_bundle, server.root / "b.tar.gz")
    dest = tmp_path / "models" / "bundle"
    proc = fetch(server.url("b.tar.gz"), dest, "--archive-sha256", digest)
    assert proc.returncode == 0, proc.stderr
    assert "files verified" in proc.stdout
    manifest = load_manifest(dest)
    verify_files(dest, manifest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in tiny_bundle.iterdir())
    assert [p.name for p in dest.parent.iterdir()] == ["bundle"], "no leftovers next to the bundle"

    again = fetch(server.url("b.tar.gz"), dest)
    assert again.returncode == 0 and "already" in again.stdout
    assert server.hits == 1, "a restarted initContainer keeps the verified bundle"


def test_bundle_at_the_archive_root_is_accepted(
    server: Server, tiny_bundle: Path, tmp_path: Path
) -> None:
    archive(tiny_bundle, server.root / "flat.tar.gz", top=None)
    proc = fetch(server.url("flat.tar.gz"), tmp_path / "bundle")
    assert proc.returncode == 0, proc.stderr


def test_a_tampered_file_fails_the_pod(server: Server, tiny_bundle: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in tiny_bundle.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    vocab = damaged / "vocab.json"
    vocab.write_text(vocab.read_text().replace('"dog"', '"cat"'))
    archive(damaged, server.root / "bad.tar.gz")
    dest = tmp_path / "bundle"
    proc = fetch(server.url("bad.tar.gz"), dest)
    assert proc.returncode == 1
    assert "failed verification" in proc.stderr and "vocab.json" in proc.stderr
    assert not dest.exists()


def test_a_wrong_archive_hash_fails(server: Server, tiny_bundle: Path, tmp_path: Path) -> None:
    archive(tiny_bundle, server.root / "b.tar.gz")
    proc = fetch(server.url("b.tar.gz"), tmp_path / "bundle", "--archive-sha256", "0" * 64)
    assert proc.returncode == 1 and "archive sha256" in proc.stderr


@pytest.mark.parametrize(
    ("name", "kind"), [("../escape.txt", tarfile.REGTYPE), ("bundle/link", tarfile.SYMTYPE)]
)
def test_unsafe_archive_members_are_refused(
    server: Server, tmp_path: Path, name: str, kind: bytes
) -> None:
    with tarfile.open(server.root / "evil.tar.gz", "w:gz") as tar:
        member = tarfile.TarInfo(name)
        member.type = kind
        member.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
        data = b"" if kind == tarfile.SYMTYPE else b"x"
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    proc = fetch(server.url("evil.tar.gz"), tmp_path / "inner" / "bundle")
    assert proc.returncode == 1
    assert "unsafe path" in proc.stderr or "not a regular file" in proc.stderr
    assert (
        not (tmp_path / "escape.txt").exists() and not (tmp_path / "inner" / "escape.txt").exists()
    )


def test_missing_archive_and_non_http_urls_fail_clearly(server: Server, tmp_path: Path) -> None:
    missing = fetch(server.url("nope.tar.gz"), tmp_path / "bundle")
    assert missing.returncode == 1 and "404" in missing.stderr
    local = fetch("file:///etc/passwd", tmp_path / "bundle")
    assert local.returncode == 1 and "only http(s)" in local.stderr
