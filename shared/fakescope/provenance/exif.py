"""Software, Make and Model from a file's EXIF, read without decoding pixels."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image

# fakescope.imageio registers the HEIF plugin that read_exif opens HEIC with.
import fakescope.imageio  # noqa: F401
from fakescope.provenance.common import Errors

__all__ = ["ExifFindings", "read_exif"]

# Pillow reads EXIF from these containers without decoding pixels (PNG is read from its own eXIf
# chunk, see read_exif).
# HEIF is pillow-heif's plugin, registered by fakescope.imageio (imported here for that): it reads
# EXIF from the container's metadata items without decoding the image.
_EXIF_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "tiff": "TIFF", "heic": "HEIF"}


@dataclass
class ExifFindings:
    software: str | None = None
    make: str | None = None
    model: str | None = None


def _exif_text(exif: Image.Exif, tag: int) -> str | None:
    value = exif.get(tag)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "").strip() or None


def read_exif(data: bytes, fmt: str | None, png_exif: bytes | None, errors: Errors) -> ExifFindings:
    """Software (0x0131), Make (0x010F) and Model (0x0110) from IFD0.

    JPEG, WebP and TIFF go through ``Image.open`` restricted to that one format: Pillow reads their
    EXIF while parsing the header, without decoding pixels. A PNG's ``getexif`` decodes the whole
    image when the eXIf chunk comes after the pixels, so a PNG's eXIf chunk, found by our own walk, is
    handed to ``Image.Exif`` directly.
    """
    found = ExifFindings()
    try:
        if fmt == "png":
            if png_exif is None:
                return found
            exif = Image.Exif()
            exif.load(png_exif)
        elif fmt in _EXIF_FORMATS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # DecompressionBombWarning: we never decode pixels
                with Image.open(io.BytesIO(data), formats=[_EXIF_FORMATS[fmt]]) as image:
                    exif = image.getexif()
        else:
            return found
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        errors.add(f"exif: {type(exc).__name__}: {exc}")
        return found
    found.software = _exif_text(exif, 0x0131)
    found.make = _exif_text(exif, 0x010F)
    found.model = _exif_text(exif, 0x0110)
    return found
