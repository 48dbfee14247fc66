"""XMP sidecars: read back with exiftool; images untouched; other fields of a sidecar kept."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from batch.sidecar import SidecarError, sidecar_path, write_xmp_sidecar

pytestmark = pytest.mark.skipif(
    shutil.which("exiftool") is None, reason="exiftool missing: run scripts/test-deps.sh"
)
ODD_CAPTIONS = [
    "a dog runs through the grass",
    'ein "Hund" läuft <schnell> & froh; 狗在草地上跑 🐶',
    "two lines\nsecond line with ]]> and <?xpacket end='w'?>",
    "  leading and trailing spaces  ",
    'lang="fr" not a language tag',
]


def exiftool(path: Path, *tags: str) -> dict[str, object]:
    result = subprocess.run(
        ["exiftool", "-j", "-b", *tags, str(path)], check=True, capture_output=True, text=True
    )
    return dict(json.loads(result.stdout)[0])


@pytest.fixture
def photo(tmp_path: Path, flickr8k_dir: Path) -> Path:
    image = tmp_path / "album" / "photo.jpg"
    image.parent.mkdir()
    shutil.copy2(next((flickr8k_dir / "images").glob("*.jpg")), image)
    return image


@pytest.mark.parametrize("caption", ODD_CAPTIONS)
def test_caption_reads_back_with_exiftool_and_image_is_untouched(photo: Path, caption: str) -> None:
    before, mtime = photo.read_bytes(), photo.stat().st_mtime_ns

    sidecar = write_xmp_sidecar(photo, caption)

    assert sidecar == photo.with_name("photo.xmp")
    tags = exiftool(sidecar, "-XMP-iptcCore:AltTextAccessibility", "-XMP-dc:Description")
    assert tags["AltTextAccessibility"] == caption and tags["Description"] == caption
    assert photo.read_bytes() == before and photo.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in photo.parent.iterdir()) == ["photo.jpg", "photo.xmp"]


def test_existing_sidecar_keeps_its_other_fields(photo: Path) -> None:
    sidecar = photo.with_suffix(".xmp")
    subprocess.run(
        ["exiftool", "-q", "-XMP-dc:Creator=Ann Person", "-XMP-dc:Subject=dogs",
         "-XMP-dc:Description-de=Ein Hund", "-XMP-xmp:Rating=4", str(sidecar)],
        check=True,
    )  # fmt: skip

    write_xmp_sidecar(photo, "a brown dog")
    write_xmp_sidecar(photo, "a brown dog on grass")  # a second run updates in place

    tags = exiftool(sidecar, "-XMP:all")
    assert tags["Creator"] == "Ann Person" and tags["Subject"] == "dogs" and tags["Rating"] == 4
    assert tags["Description-de"] == "Ein Hund"
    assert exiftool(sidecar, "-XMP-dc:Description", "-XMP-iptcCore:AltTextAccessibility") == {
        "SourceFile": str(sidecar),
        "Description": "a brown dog on grass",
        "AltTextAccessibility": "a brown dog on grass",
    }


def test_sidecar_dir_mirrors_the_tree_below_root(tmp_path: Path, photo: Path) -> None:
    sidecar = write_xmp_sidecar(photo, "a dog", sidecar_dir=tmp_path / "xmp", root=tmp_path)

    assert sidecar == tmp_path / "xmp" / "album" / "photo.xmp"
    assert exiftool(sidecar, "-XMP-dc:Description")["Description"] == "a dog"
    assert not photo.with_suffix(".xmp").exists()
    with pytest.raises(ValueError, match="not under the sidecar root"):
        sidecar_path(photo, sidecar_dir=tmp_path / "xmp", root=tmp_path / "elsewhere")


def test_corrupt_sidecar_is_an_error_and_left_as_it_was(photo: Path) -> None:
    sidecar = photo.with_suffix(".xmp")
    sidecar.write_text("<x:xmpmeta><rdf:RDF><broken")
    with pytest.raises(SidecarError, match="photo.xmp"):
        write_xmp_sidecar(photo, "a dog")
    assert sidecar.read_text() == "<x:xmpmeta><rdf:RDF><broken"
    assert sorted(p.name for p in photo.parent.iterdir()) == ["photo.jpg", "photo.xmp"]


def test_empty_caption_is_refused(photo: Path) -> None:
    with pytest.raises(ValueError, match="empty caption"):
        write_xmp_sidecar(photo, "  ")
    assert not photo.with_suffix(".xmp").exists()
