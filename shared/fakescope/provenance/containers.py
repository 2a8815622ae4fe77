"""The containers walked by hand, every length checked: PNG chunks (text, XMP, EXIF, C2PA) and JPEG
segments up to the scan (XMP, EXIF, C2PA), and a bounded search for raw XMP in any other file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from fakescope.provenance.common import (
    MAX_JPEG_MARKERS,
    MAX_PNG_CHUNKS,
    MAX_PNG_TEXT_BYTES,
    MAX_PNG_TEXT_TOTAL,
    MAX_XMP_BYTES,
    XMP_SCAN_BYTES,
    Errors,
)

__all__ = ["PNG_TEXT_KEYS", "JpegFindings", "PngFindings", "find_raw_xmp", "walk_jpeg", "walk_png"]

# PNG text keys worth reporting: Stable Diffusion front-ends (AUTOMATIC1111 and its forks write
# ``parameters``; ComfyUI ``prompt`` and ``workflow``; InvokeAI ``invokeai_metadata``,
# ``invokeai_graph``, ``sd-metadata`` and the older ``Dream``; Fooocus ``fooocus_scheme``), and the
# PNG standard keys NovelAI and others fill (``Software``, ``Source``, ``Comment``, ``Description``).
PNG_TEXT_KEYS = (
    "parameters",
    "prompt",
    "workflow",
    "invokeai_metadata",
    "invokeai_graph",
    "sd-metadata",
    "Dream",
    "fooocus_scheme",
    "generation_data",
    "Software",
    "Source",
    "Comment",
    "Description",
    "Title",
    "Author",
    "Creation Time",
)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_XMP_JPEG_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_PNG_KEY = "XML:com.adobe.xmp"


@dataclass
class PngFindings:
    text: dict[str, str] = field(default_factory=dict)
    xmp: bytes | None = None
    exif: bytes | None = None
    has_c2pa: bool = False


class _InflateFailed(Exception):
    """A text chunk that does not inflate, after ``spent`` bytes of output were produced for it."""

    def __init__(self, spent: int) -> None:
        self.spent = spent


def _inflate(payload: bytes, key: str, budget: int, errors: Errors) -> bytes:
    """Inflates a text chunk, capped: a zlib bomb yields its first MAX_PNG_TEXT_BYTES and an error.

    Raises:
        _InflateFailed: the stream is corrupt (its checksum, say); the inflating it cost still counts
            against the file's text budget, or thousands of such chunks cost tens of seconds.
    """
    cap = min(MAX_PNG_TEXT_BYTES, budget)
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, cap)
    except zlib.error as exc:
        errors.add(f"png: text chunk {key!r} does not inflate: {exc}")
        raise _InflateFailed(cap) from None
    if inflater.unconsumed_tail:
        errors.add(f"png: text chunk {key!r} inflates past {cap} bytes; read the first {cap}")
    return out


def _parse_png_text(ctype: bytes, body: bytes, budget: int, errors: Errors) -> tuple[str, str] | None:
    """One tEXt, zTXt or iTXt chunk as (key, text); None when it is malformed (and recorded)."""
    name = ctype.decode("ascii")
    sep = body.find(b"\x00")
    if sep < 1 or sep > 79:
        errors.add(f"png: {name} chunk has no valid keyword")
        return None
    key = body[:sep].decode("latin-1")
    rest = body[sep + 1 :]
    if ctype == b"tEXt":
        return key, rest[:budget].decode("latin-1")
    if ctype == b"zTXt":
        if not rest or rest[0] != 0:
            errors.add(f"png: zTXt chunk {key!r} uses an unknown compression method")
            return None
        return key, _inflate(rest[1:], key, budget, errors).decode("latin-1")
    # iTXt: compression flag, method, language tag NUL, translated keyword NUL, UTF-8 text.
    if len(rest) < 2:
        errors.add(f"png: iTXt chunk {key!r} is truncated")
        return None
    flag, method = rest[0], rest[1]
    lang_end = rest.find(b"\x00", 2)
    trans_end = rest.find(b"\x00", lang_end + 1) if lang_end >= 0 else -1
    if trans_end < 0:
        errors.add(f"png: iTXt chunk {key!r} is truncated")
        return None
    payload = rest[trans_end + 1 :]
    if flag:
        if method != 0:
            errors.add(f"png: iTXt chunk {key!r} uses an unknown compression method")
            return None
        payload = _inflate(payload, key, budget, errors)
    return key, payload[:budget].decode("utf-8", errors="replace")


def walk_png(data: bytes, errors: Errors) -> PngFindings:
    """Text, XMP, EXIF and C2PA chunks of a PNG. A length past the buffer ends the walk, with an error."""
    found = PngFindings()
    pos = len(_PNG_SIGNATURE)
    budget = MAX_PNG_TEXT_TOTAL
    over_budget_reported = False
    for _ in range(MAX_PNG_CHUNKS):
        if pos + 8 > len(data):
            errors.add(f"png: file ends at offset {pos} without an IEND chunk")
            return found
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        start, end = pos + 8, pos + 8 + length
        # A manifest box cut short is still a manifest that was there (and is now broken).
        found.has_c2pa = found.has_c2pa or ctype == b"caBX"
        if end + 4 > len(data):
            errors.add(f"png: chunk {ctype!r} at offset {pos} runs past the end of the file")
            return found
        if ctype == b"IEND":
            return found
        if ctype in (b"tEXt", b"zTXt", b"iTXt"):
            if budget <= 0:
                if not over_budget_reported:
                    errors.add(f"png: text chunks exceed {MAX_PNG_TEXT_TOTAL} bytes; the rest are not read")
                    over_budget_reported = True
            else:
                try:
                    parsed = _parse_png_text(ctype, data[start:end], budget, errors)
                except _InflateFailed as failed:
                    budget -= failed.spent  # the work was done: it counts
                    parsed = None
                budget -= length  # every text chunk's bytes count too, parsed or not
                if parsed is not None:
                    key, text = parsed
                    budget -= len(text)
                    if key == _XMP_PNG_KEY:
                        if found.xmp is None:
                            found.xmp = text.encode("utf-8")
                    elif key not in found.text:
                        found.text[key] = text
        elif ctype == b"eXIf":
            found.exif = data[start:end]
        pos = end + 4
    errors.add(f"png: more than {MAX_PNG_CHUNKS} chunks; the rest are not read")
    return found


@dataclass
class JpegFindings:
    xmp: bytes | None = None
    has_c2pa: bool = False
    # Whether an APP1 "Exif" segment came before the scan, and whether the walk got there: a JPEG whose
    # segments were all read and held no EXIF has none for Pillow to find either.
    has_exif: bool = False
    complete: bool = False


def walk_jpeg(data: bytes, errors: Errors) -> JpegFindings:
    """The XMP APP1 segment and any C2PA (APP11 JUMBF) segment, up to the start of the scan."""
    found = JpegFindings()
    pos = 2
    for _ in range(MAX_JPEG_MARKERS):
        if pos + 4 > len(data):
            return found
        if data[pos] != 0xFF:
            errors.add(f"jpeg: no segment marker at offset {pos}")
            return found
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no metadata after this point
            found.complete = True
            return found
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        body = data[pos + 4 : min(end, len(data))]
        # APP11 carries JUMBF; C2PA's superbox names itself within the first bytes. Checked before the
        # length, so a manifest segment cut short still counts as a manifest that was there.
        if marker == 0xEB and body[:2] == b"JP" and b"c2pa" in body[:64]:
            found.has_c2pa = True
        if length < 2 or end > len(data):
            errors.add(f"jpeg: segment 0x{marker:02X} at offset {pos} runs past the end of the file")
            return found
        if marker == 0xE1 and body.startswith(_XMP_JPEG_PREFIX) and found.xmp is None:
            found.xmp = body[len(_XMP_JPEG_PREFIX) :]
        found.has_exif |= marker == 0xE1 and body.startswith(b"Exif\0\0")  # what Pillow reads EXIF from
        pos = end
    errors.add(f"jpeg: more than {MAX_JPEG_MARKERS} markers before the scan; the rest are not read")
    return found


def find_raw_xmp(data: bytes) -> bytes | None:
    """The first ``<x:xmpmeta>`` element in the first XMP_SCAN_BYTES, for containers we do not walk."""
    start = data.find(b"<x:xmpmeta", 0, XMP_SCAN_BYTES)
    if start < 0:
        return None
    close = b"</x:xmpmeta>"
    end = data.find(close, start, start + MAX_XMP_BYTES)
    if end < 0:
        return data[start : start + MAX_XMP_BYTES]  # parsing will say it is unterminated
    return data[start : end + len(close)]
