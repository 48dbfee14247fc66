"""Download a bundle archive, unpack it safely and verify it (the chart's initContainer).

    python fetch_bundle.py --url URL --dest DIR [--archive-sha256 HEX] [--timeout SECONDS]

The archive is a ``.tar.gz`` (or plain ``.tar``) holding a bundle folder: ``manifest.json`` plus the
files it lists, at the archive root or inside one top-level folder. Every file's size and sha256 are
checked against the manifest (``service.manifest.verify_files``, from the service image) before the
bundle is moved into ``DIR``; on any problem the script exits non-zero and the pod never starts.
Only regular files and folders are unpacked: links, devices, absolute paths and ``..`` are refused.
An already verified bundle in ``DIR`` (initContainer restart) is kept without downloading again.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path, PurePosixPath

from service.manifest import MANIFEST_FILE, BundleError, load_manifest, verify_files

CHUNK = 1 << 20


class FetchError(Exception):
    """The bundle could not be fetched or failed verification."""


def download(url: str, target: Path, timeout: float) -> str:
    """Stream ``url`` into ``target``; return the sha256 of what was written."""
    if not url.startswith(("https://", "http://")):
        raise FetchError(f"only http(s) URLs are supported, got {url.split(':', 1)[0]!r}")
    digest = hashlib.sha256()
    started = time.monotonic()
    written = 0
    with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:  # noqa: S310
        while chunk := response.read(CHUNK):
            if time.monotonic() - started > timeout:
                raise FetchError(f"download exceeded {timeout:.0f} s")
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    print(f"fetch_bundle: downloaded {written} bytes in {time.monotonic() - started:.1f} s")
    return digest.hexdigest()


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack regular files and folders only, each strictly inside ``dest``."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if member.name.startswith("/") or ".." in parts:
                raise FetchError(f"unsafe path in archive: {member.name!r}")
            target = dest.joinpath(*parts) if parts else dest
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise FetchError(f"cannot read {member.name!r} from the archive")
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
            else:
                raise FetchError(f"archive member {member.name!r} is not a regular file or folder")


def bundle_root(unpacked: Path) -> Path:
    """The folder holding manifest.json: the archive root or its single top-level folder."""
    if (unpacked / MANIFEST_FILE).is_file():
        return unpacked
    children = [p for p in unpacked.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / MANIFEST_FILE).is_file():
        return children[0]
    raise FetchError(f"no {MANIFEST_FILE} at the archive root or in a single top-level folder")


def already_verified(dest: Path) -> bool:
    try:
        verify_files(dest, load_manifest(dest))
    except BundleError:
        return False
    return True


def fetch(url: str, dest: Path, archive_sha256: str = "", timeout: float = 300.0) -> Path:
    """Fetch, verify and install the bundle at ``dest``; return ``dest``."""
    if dest.is_dir() and already_verified(dest):
        print(f"fetch_bundle: verified bundle already in {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as work_name:
        work = Path(work_name)
        archive = work / "bundle.tar"
        actual = download(url, archive, timeout)
        if archive_sha256 and actual != archive_sha256.lower():
            raise FetchError(f"archive sha256 {actual} != expected {archive_sha256}")
        unpacked = work / "unpacked"
        unpacked.mkdir()
        safe_extract(archive, unpacked)
        root = bundle_root(unpacked)
        try:
            manifest = load_manifest(root)
            verify_files(root, manifest)
        except BundleError as exc:
            raise FetchError(f"bundle failed verification: {exc}") from exc
        if dest.exists():
            shutil.rmtree(dest)
        root.rename(dest)
    print(
        f"fetch_bundle: {manifest.name} {manifest.version}: {len(manifest.files)} files verified "
        f"into {dest}"
    )
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http(s) URL of the .tar.gz bundle archive")
    parser.add_argument("--dest", required=True, type=Path, help="folder to install the bundle in")
    parser.add_argument("--archive-sha256", default="", help="expected sha256 of the archive")
    parser.add_argument("--timeout", type=float, default=300.0, help="download timeout, seconds")
    args = parser.parse_args(argv)
    try:
        fetch(args.url, args.dest, args.archive_sha256, args.timeout)
    except (FetchError, OSError, tarfile.TarError) as exc:
        print(f"fetch_bundle: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
