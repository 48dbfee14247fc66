"""XMP sidecars: the caption beside the image, for photo managers; the image is never touched.

Naming: ``photo.jpg`` -> ``photo.xmp`` beside it (exiftool's ``%d%f.xmp``, Lightroom, Capture One;
darktable's ``photo.jpg.xmp`` differs), or under ``sidecar_dir`` mirroring the tree below ``root``.
Two images differing only in extension share one sidecar: callers check ``sidecar_path`` clashes.

The caption goes into IPTC Core "Alt Text (Accessibility)" (``Iptc4xmpCore:AltTextAccessibility``)
and ``dc:description``, both lang-alt ``x-default``; other languages and every other field of an
existing sidecar are kept. Written to a temporary copy, then ``os.replace``d: a crash leaves the old
sidecar or the new one.

Library: ``pyexiv2`` (bundles libexiv2 0.28, so no system package): it opens a standalone ``.xmp``
packet, keeps unknown namespaces, and writes lang-alt values for properties exiv2 does not list,
such as AltTextAccessibility (checked against exiftool). Its calls are serialised by a lock.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

_X_DEFAULT = 'lang="x-default"'  # pyexiv2's key for the x-default entry of a lang-alt value
_EMPTY_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta>\n'
    '<?xpacket end="w"?>\n'
).encode()
_PROPERTIES = ("Xmp.iptc.AltTextAccessibility", "Xmp.dc.description")
_LOCK = threading.Lock()


class SidecarError(Exception):
    """A sidecar that cannot be read or written (corrupt XMP, no permission)."""


def sidecar_path(
    image_path: str | os.PathLike[str],
    *,
    sidecar_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """``<folder>/<stem>.xmp`` beside the image, or ``sidecar_dir/<path below root>/<stem>.xmp``.

    ``root`` defaults to the working directory; an image outside it is a ``ValueError``.
    """
    image = Path(image_path)
    if image.suffix.lower() == ".xmp":
        raise ValueError(f"{image} is itself an XMP file")
    if sidecar_dir is None:
        return image.with_suffix(".xmp")
    base = os.path.abspath(root if root is not None else os.curdir)
    relative = os.path.relpath(os.path.abspath(image), base)
    if relative.startswith(os.pardir + os.sep) or relative == os.pardir:
        raise ValueError(f"{image} is not under the sidecar root {base}")
    return (Path(sidecar_dir) / relative).with_suffix(".xmp")


def write_xmp_sidecar(
    image_path: str | os.PathLike[str],
    caption: str,
    *,
    sidecar_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write (or update) the image's sidecar with ``caption``; returns the sidecar's path."""
    if not caption.strip():
        raise ValueError("an empty caption is not written to a sidecar")
    target = sidecar_path(image_path, sidecar_dir=sidecar_dir, root=root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if target.exists():
            shutil.copyfile(target, tmp)
            shutil.copymode(target, tmp)
        else:
            tmp.write_bytes(_EMPTY_PACKET)
        _set_caption(tmp, caption, shown=target)
        os.replace(tmp, target)
    except OSError as exc:
        raise SidecarError(f"{target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _set_caption(xmp_file: Path, caption: str, *, shown: Path) -> None:
    import pyexiv2

    with _LOCK:
        try:
            image = pyexiv2.Image(str(xmp_file))
        except RuntimeError as exc:  # libexiv2's errors surface as RuntimeError
            raise SidecarError(f"{shown}: not a readable XMP sidecar ({exc})") from exc
        try:
            current = image.read_xmp()
            changes = {}
            for key in _PROPERTIES:
                old = current.get(key)
                languages = dict(old) if isinstance(old, dict) else {}
                changes[key] = {**languages, _X_DEFAULT: caption}
            image.modify_xmp(changes)
        except RuntimeError as exc:
            raise SidecarError(f"{shown}: cannot update it ({exc})") from exc
        finally:
            image.close()
