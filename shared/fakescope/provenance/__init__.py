"""What an image file declares about its own origin: C2PA, IPTC/XMP, PNG text chunks, EXIF.

A generator that labels its output (Content Credentials, an IPTC digital source type, Stable
Diffusion's ``parameters`` chunk, ``Software: NovelAI``) has said more than any pixel statistic can;
a signed manifest that no longer matches the pixels says the file was changed after signing. This
module reads those declarations from the bytes and nothing else: it never decodes pixels, never
fetches a remote manifest or an OCSP response, and never executes what it finds. Every reader is
bounded in the bytes it looks at, and the C2PA read, the one call into native code whose cost we do
not control, runs in a helper process that is killed past its timeout (fakescope.c2pa_process).

The absence of a declaration proves nothing (metadata is stripped by every re-encode), so the caller
uses a positive finding as evidence next to the detector's score, never a missing one. The package
imports neither torch nor ``c2pa``.

Modules: :mod:`.containers` walks PNG chunks and JPEG segments, :mod:`.xmp`, :mod:`.exif` and
:mod:`.c2pa` read one kind of declaration each, and :mod:`.decision` turns their findings into the
verdict, a pure function; :func:`read_provenance` here runs them on one file.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from fakescope.imageio import sniff_format
from fakescope.provenance.c2pa import C2paReading, read_c2pa
from fakescope.provenance.common import (
    AI_SOURCE_TYPES,
    C2PA_NOT_INSTALLED,
    DETAIL_CHARS,
    GENERATOR_PATTERNS,
    MAX_PNG_TEXT_BYTES,
    MAX_PNG_TEXT_TOTAL,
    MAX_RECORD_CHARS,
    MAX_RECORD_DEPTH,
    MAX_REPORTED_KEYS,
    TRUST_LIST_UNUSABLE,
    UNKNOWN_FORMAT,
    XMP_DTD_REFUSED,
    XMP_NOT_UTF8,
    Errors,
    match_generator,
    truncate,
)
from fakescope.provenance.containers import PNG_TEXT_KEYS, PngFindings, find_raw_xmp, walk_jpeg, walk_png
from fakescope.provenance.decision import decide
from fakescope.provenance.exif import ExifFindings, read_exif
from fakescope.provenance.xmp import XmpFindings, read_xmp

__all__ = [
    "AI_SOURCE_TYPES",
    "C2PA_NOT_INSTALLED",
    "DETAIL_CHARS",
    "GENERATOR_PATTERNS",
    "MAX_PNG_TEXT_BYTES",
    "MAX_PNG_TEXT_TOTAL",
    "MAX_RECORD_CHARS",
    "PNG_TEXT_KEYS",
    "TRUST_LIST_UNUSABLE",
    "UNKNOWN_FORMAT",
    "XMP_DTD_REFUSED",
    "XMP_NOT_UTF8",
    "C2paReading",
    "Provenance",
    "match_generator",
    "provenance_summary",
    "read_provenance",
]


@dataclass(frozen=True)
class Provenance:
    """What one file declares about its origin, and what in the file said so.

    Attributes:
        declares_ai: The file itself says a model made it: a C2PA manifest that validates and carries
            an AI digital source type (or names a known generator), an IPTC AI digital source type in
            XMP, Stable Diffusion generation parameters, or a known generator's name in a tool field.
        tampered: A C2PA manifest is present but fails validation (or cannot be parsed): the file was
            changed after it was signed. Such a manifest's claims never count toward ``declares_ai``.
        sources: The readers whose findings made ``declares_ai`` true, in the order
            ``c2pa``, ``xmp``, ``png_text``, ``exif``.
        generator: The generator named, if any (a name from ``GENERATOR_PATTERNS``).
        digital_source_type: The IPTC digital source type term (the URI's last path segment), if any.
        c2pa: The C2PA reading (:class:`~fakescope.provenance.c2pa.C2paReading`).
        details: The raw findings: ``format``, ``png_text`` (key to value, truncated), ``exif_software``,
            ``exif_make``, ``exif_model``, ``xmp_creator_tool``, ``xmp_digital_source_type``, ``errors``
            (one line per reader that failed), and ``skipped`` when nothing was read.
    """

    declares_ai: bool
    tampered: bool
    sources: tuple[str, ...]
    generator: str | None
    digital_source_type: str | None
    c2pa: C2paReading = field(default_factory=C2paReading)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy: the caller may store or mutate it without touching this object."""
        return {
            "declares_ai": self.declares_ai,
            "tampered": self.tampered,
            "sources": list(self.sources),
            "generator": self.generator,
            "digital_source_type": self.digital_source_type,
            "c2pa": self.c2pa.to_dict(),
            "details": copy.deepcopy(self.details),
        }


def _empty_details(fmt: str | None) -> dict[str, Any]:
    """Every key ``details`` has, so a consumer never tells "not found" from "not read" by a KeyError."""
    return {
        "format": fmt,
        "png_text": {},
        "exif_software": None,
        "exif_make": None,
        "exif_model": None,
        "xmp_creator_tool": None,
        "xmp_digital_source_type": None,
        "errors": [],
    }


def read_provenance(
    data: bytes,
    *,
    max_bytes: int = 64 * 1024 * 1024,
    trust_anchors_pem: str | None = None,
    timeout_s: float = 2.0,
) -> Provenance:
    """Reads what ``data`` declares about its origin. Never raises on bad input.

    Each reader (C2PA, XMP, PNG text, EXIF) runs on its own; one that fails adds a line to
    ``details["errors"]`` and the others go on.

    Args:
        data: The file's bytes.
        max_bytes: Larger inputs are not read at all (the result says so): the C2PA reader hashes the
            whole asset, and the caller's own limit should have stopped such a file earlier.
        trust_anchors_pem: The operator's C2PA trust list, PEM certificates concatenated. With it,
            ``c2pa.trusted`` says whether the signer chains to one of them; without it, or when
            c2pa-rs cannot parse it (``c2pa.reason`` then says so), None. A signer outside the list
            does not make a manifest invalid: its claims still count toward ``declares_ai``, since
            nobody gains by falsely labelling an image as generated.
        timeout_s: How long the C2PA read may take; past it the helper process reading it is killed and
            the result says so.
    """
    if len(data) > max_bytes:
        reason = f"input is {len(data)} bytes, over the {max_bytes}-byte limit; not read"
        c2pa = C2paReading(reason=reason)
        nothing = decide(c2pa, [], XmpFindings(), {}, ExifFindings())
        return Provenance(**vars(nothing), c2pa=c2pa, details={**_empty_details(None), "skipped": reason})

    errors = Errors()
    fmt = sniff_format(data)
    details = _empty_details(fmt)
    png = PngFindings()
    xmp_packet: bytes | None = None
    container_seen = False
    exif_possible = True
    if fmt == "png":
        png = walk_png(data, errors)
        xmp_packet, container_seen = png.xmp, png.has_c2pa
    elif fmt == "jpeg":
        jpeg = walk_jpeg(data, errors)
        xmp_packet, container_seen = jpeg.xmp, jpeg.has_c2pa
        # Most JPEGs carry no EXIF: then Pillow need not parse the file a second time to say so.
        exif_possible = jpeg.has_exif or not jpeg.complete
    if xmp_packet is None:
        xmp_packet = find_raw_xmp(data)

    c2pa, c2pa_names = read_c2pa(data, fmt, container_seen, trust_anchors_pem, timeout_s, errors)
    xmp = read_xmp(xmp_packet, errors) if xmp_packet is not None else XmpFindings()
    exif = read_exif(data, fmt, png.exif, errors) if exif_possible else ExifFindings()

    details["png_text"] = {k: truncate(v) for k, v in list(png.text.items())[:MAX_REPORTED_KEYS]}
    details["exif_software"] = exif.software
    details["exif_make"] = exif.make
    details["exif_model"] = exif.model
    details["xmp_creator_tool"] = xmp.creator_tool
    details["xmp_digital_source_type"] = xmp.digital_source_type

    decision = decide(c2pa, c2pa_names, xmp, png.text, exif)
    details["errors"] = errors.items
    return Provenance(**vars(decision), c2pa=c2pa, details=details)


def provenance_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a result carries of a :meth:`Provenance.to_dict` record: all of it when the file declared
    anything (a source, a manifest, tampering), None for the ordinary file that declares nothing, so
    results stay small where there is nothing to say."""
    if not record:
        return None
    c2pa = record.get("c2pa") or {}
    if not (record.get("sources") or record.get("tampered") or c2pa.get("present") or record.get("generator")):
        return None
    out = _bounded(record, 0)
    if len(json.dumps(out)) > MAX_RECORD_CHARS:
        # Keep the verdict-bearing fields; the file's own detail is what overflowed.
        kept = out.get("c2pa") or {}
        out = {k: v for k, v in out.items() if k not in ("details", "c2pa")}
        out["c2pa"] = {k: kept[k] for k in ("present", "valid", "signer") if k in kept}
        out["truncated"] = True
    return out


def _bounded(value: Any, depth: int) -> Any:
    """``value`` with every string cut to DETAIL_CHARS, every list and mapping to MAX_REPORTED_KEYS
    entries, and nothing nested deeper than MAX_RECORD_DEPTH."""
    if isinstance(value, str):
        return truncate(value)
    if depth >= MAX_RECORD_DEPTH and isinstance(value, (dict, list, tuple)):
        return "…"
    if isinstance(value, dict):
        return {truncate(str(k)): _bounded(v, depth + 1) for k, v in list(value.items())[:MAX_REPORTED_KEYS]}
    if isinstance(value, (list, tuple)):
        return [_bounded(v, depth + 1) for v in value[:MAX_REPORTED_KEYS]]
    return value
