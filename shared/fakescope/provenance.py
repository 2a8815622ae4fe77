"""What an image file declares about its own origin: C2PA, IPTC/XMP, PNG text chunks, EXIF.

A generator that labels its output (Content Credentials, an IPTC digital source type, Stable
Diffusion's ``parameters`` chunk, ``Software: NovelAI``) has said more than any pixel statistic can;
a signed manifest that no longer matches the pixels says the file was changed after signing. This
module reads those declarations from the bytes and nothing else: it never decodes pixels, never
fetches a remote manifest or an OCSP response, and never executes what it finds. Every reader is
bounded in the bytes it looks at, and the C2PA read, the one call into native code whose cost we do
not control, runs in a helper process that is killed past its timeout (fakescope.c2pa_process).

The absence of a declaration proves nothing (metadata is stripped by every re-encode), so the caller
uses a positive finding as evidence next to the detector's score, never a missing one. The module
imports neither torch nor ``c2pa``.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import logging
import re
import struct
import warnings
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from fakescope.c2pa_process import C2paReaderFailed, C2paReadError, read_manifest_store

# fakescope.imageio also registers the HEIF plugin that _read_exif opens HEIC with.
from fakescope.imageio import MEDIA_TYPES, sniff_format

__all__ = [
    "AI_SOURCE_TYPES",
    "GENERATOR_PATTERNS",
    "PNG_TEXT_KEYS",
    "Provenance",
    "provenance_summary",
    "read_provenance",
]

logger = logging.getLogger(__name__)

# IPTC digital source type terms (the last path segment of the URI) that say a model made the
# content. ``algorithmicMedia`` (made by a program, no training data) and ``compositeSynthetic`` (a
# composite with at least one synthetic element) are not necessarily generative AI, but a file
# declaring either says it is not a plain capture, which is what a caller asks us about.
# ``trainedAlgorithmicData`` is C2PA's own spelling in early manifests.
AI_SOURCE_TYPES = frozenset(
    {
        "trainedAlgorithmicMedia",
        "compositeWithTrainedAlgorithmicMedia",
        "algorithmicMedia",
        "compositeSynthetic",
        "trainedAlgorithmicData",
    }
)

# (regular expression, generator name), tried in order against tool names (EXIF Software, XMP
# CreatorTool, the C2PA claim generator, PNG Software/Source/Comment): the first match names the
# generator, so the specific entries come before the generic ones ("stable-diffusion-webui" is
# AUTOMATIC1111, not just Stable Diffusion). Each pattern matches as a whole word, case-insensitive.
GENERATOR_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"automatic1111|a1111|stable[\s_-]?diffusion[\s_-]?web[\s_-]?ui", "AUTOMATIC1111"),
    (r"sd[\s_-]?webui[\s_-]?forge|webui[\s_-]?forge", "Forge"),
    (r"sd\.next", "SD.Next"),
    (r"comfy[\s_-]?ui", "ComfyUI"),
    (r"invoke[\s_-]?ai", "InvokeAI"),
    (r"fooocus", "Fooocus"),
    (r"krita[\s_-]?ai(?:[\s_-]?diffusion)?|ai[\s_-]diffusion", "Krita AI Diffusion"),
    (r"novel[\s_-]?ai", "NovelAI"),
    (r"stable[\s_-]?diffusion(?:[\s_-]?xl)?|sdxl|stability[\s_.-]?ai", "Stable Diffusion"),
    (r"midjourney", "Midjourney"),
    (r"dall[\s·._-]?e(?:[\s_-]?[23])?", "DALL-E"),
    (r"openai|chatgpt|gpt[\s_-]?4o|gpt[\s_-]?image(?:[\s_-]?1)?|sora", "OpenAI"),
    (r"(?:adobe[\s_-]?)?firefly", "Adobe Firefly"),
    (r"(?:google[\s_-]?)?imagen(?:[\s_-]?\d)?", "Google Imagen"),
    (r"(?:google[\s_-]?)?gemini|nano[\s_-]?banana", "Google Gemini"),
    (r"synthid|made with google ai", "Google (SynthID)"),
    (r"bing[\s_-]?image[\s_-]?creator|image creator from (?:microsoft|designer)", "Bing Image Creator"),
    (r"microsoft[\s_-]?designer|designer\.microsoft\.com", "Microsoft Designer"),
    (r"meta[\s_-]?ai|imagine with meta", "Meta AI"),
    (r"leonardo(?:[\s_.-]?ai)?", "Leonardo.Ai"),
    (r"runway(?:[\s_-]?ml)?", "Runway"),
    (r"ideogram", "Ideogram"),
    (r"black[\s_-]?forest[\s_-]?labs|flux(?:\.1)?(?:[\s_-]?(?:dev|schnell|pro|kontext))?", "FLUX (Black Forest Labs)"),
)
_GENERATOR_RES = tuple(
    (re.compile(rf"(?<![A-Za-z0-9])(?:{pattern})(?![A-Za-z0-9])", re.IGNORECASE), name)
    for pattern, name in GENERATOR_PATTERNS
)

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
# PNG keys whose value names a tool, so a generator name there is a declaration. Prompts
# (``parameters``, ``Description``) are not searched for names: "in the style of Midjourney" is a
# prompt, not a declaration.
_PNG_NAME_KEYS = ("Software", "Source", "Comment")
_PNG_KEY_GENERATORS = {
    "invokeai_metadata": "InvokeAI",
    "invokeai_graph": "InvokeAI",
    "sd-metadata": "InvokeAI",
    "Dream": "InvokeAI",
    "fooocus_scheme": "Fooocus",
}
# AUTOMATIC1111's infotext: "<prompt>\nNegative prompt: ...\nSteps: 20, Sampler: Euler a, CFG scale: 7, ...".
_A1111_STEPS = re.compile(r"(?<![A-Za-z])Steps: \d+")
_A1111_FIELDS = ("Sampler: ", "CFG scale: ", "Seed: ", "Model hash: ", "Model: ")
_FORGE_VERSION = re.compile(r"Version: f\d")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_XMP_JPEG_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_PNG_KEY = "XML:com.adobe.xmp"
_XMP_NS = "http://ns.adobe.com/xap/1.0/"
_RDF_RESOURCE = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}resource"

# Bounds. A JPEG APP1 segment holds at most 64 KiB, and a PNG's XMP with an embedded thumbnail a few
# hundred; a packet larger than this is not metadata we need to read.
MAX_XMP_BYTES = 4 * 1024 * 1024
# The raw ``<x:xmpmeta`` search (WebP, TIFF, GIF, anything else) looks only this far into the file:
# writers put metadata near the start, and a 64 MB scan per request buys nothing.
XMP_SCAN_BYTES = 4 * 1024 * 1024
# One zTXt/iTXt chunk inflates to at most this, and all of a file's text chunks together to
# MAX_PNG_TEXT_TOTAL: ComfyUI workflows run to a few hundred KB, a zlib bomb to gigabytes.
MAX_PNG_TEXT_BYTES = 2 * 1024 * 1024
MAX_PNG_TEXT_TOTAL = 8 * 1024 * 1024
MAX_PNG_CHUNKS = 200_000
MAX_REPORTED_KEYS = 64
MAX_REPORTED_ACTIONS = 64
MAX_REPORTED_ERRORS = 32
DETAIL_CHARS = 200
# The label of a C2PA manifest store's JUMBF box, in every format that embeds one.
_C2PA_LABEL = b"c2pa"
# Markers (fill bytes included) walked before a JPEG's scan: a real file has a few dozen.
MAX_JPEG_MARKERS = 4096
# What one result may carry of a file's declarations, whatever the file says: every string, list and
# mapping bounded (a 0.06 MiB upload once produced 16 MiB of provenance per item), and the record
# as JSON at most this many characters.
MAX_RECORD_CHARS = 16 * 1024
MAX_RECORD_DEPTH = 6

C2PA_NOT_INSTALLED = "c2pa-python is not installed"
UNKNOWN_FORMAT = "unrecognised file format"
TRUST_LIST_UNUSABLE = "trust list not usable, read without it"
XMP_DTD_REFUSED = "xmp: packet declares a DTD or entities; refused"
XMP_NOT_UTF8 = "xmp: packet is UTF-16 or UTF-32, not UTF-8; refused"

# Pillow reads EXIF from these containers without decoding pixels (PNG is read from its own eXIf
# chunk, see _read_exif).
# HEIF is pillow-heif's plugin, registered by fakescope.imageio (imported here for that): it reads
# EXIF from the container's metadata items without decoding the image.
_EXIF_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "tiff": "TIFF", "heic": "HEIF"}


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
        c2pa: The C2PA reading: ``checked``, ``present``, ``valid``, ``trusted``, ``signer``,
            ``claim_generator``, ``actions``, ``validation_errors``, ``reason``.
        details: The raw findings: ``format``, ``png_text`` (key to value, truncated), ``exif_software``,
            ``exif_make``, ``exif_model``, ``xmp_creator_tool``, ``xmp_digital_source_type``, ``errors``
            (one line per reader that failed), and ``skipped`` when nothing was read.
    """

    declares_ai: bool
    tampered: bool
    sources: tuple[str, ...]
    generator: str | None
    digital_source_type: str | None
    c2pa: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy: the caller may store or mutate it without touching this object."""
        return {
            "declares_ai": self.declares_ai,
            "tampered": self.tampered,
            "sources": list(self.sources),
            "generator": self.generator,
            "digital_source_type": self.digital_source_type,
            "c2pa": copy.deepcopy(self.c2pa),
            "details": copy.deepcopy(self.details),
        }


# ----------------------------------------------------------------------------------------------
# Helpers


def _match_generator(text: str | None) -> str | None:
    """The first generator in GENERATOR_PATTERNS that ``text`` names as a whole word."""
    if not text:
        return None
    for regex, name in _GENERATOR_RES:
        if regex.search(text):
            return name
    return None


def _source_term(value: str | None) -> str | None:
    """The IPTC term of a digital source type: the last segment of its URI, or the value itself."""
    if not value:
        return None
    term = value.strip().rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1]
    return term or None


def _truncate(value: str) -> str:
    return value if len(value) <= DETAIL_CHARS else value[:DETAIL_CHARS] + "…"


# The containers a C2PA manifest can be embedded in (every one fakescope recognises but BMP).
_C2PA_FORMATS = frozenset(MEDIA_TYPES) - {"bmp"}


class _Errors:
    """Collects one line per failure, capped, so a file built to fail everywhere stays small."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        if len(self.items) < MAX_REPORTED_ERRORS:
            self.items.append(message)


# ----------------------------------------------------------------------------------------------
# Containers: PNG chunks and JPEG segments, walked by hand with every length checked


@dataclass
class _PngFindings:
    text: dict[str, str] = field(default_factory=dict)
    xmp: bytes | None = None
    exif: bytes | None = None
    has_c2pa: bool = False


class _InflateFailed(Exception):
    """A text chunk that does not inflate, after ``spent`` bytes of output were produced for it."""

    def __init__(self, spent: int) -> None:
        self.spent = spent


def _inflate(payload: bytes, key: str, budget: int, errors: _Errors) -> bytes:
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


def _parse_png_text(ctype: bytes, body: bytes, budget: int, errors: _Errors) -> tuple[str, str] | None:
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


def _walk_png(data: bytes, errors: _Errors) -> _PngFindings:
    """Text, XMP, EXIF and C2PA chunks of a PNG. A length past the buffer ends the walk, with an error."""
    found = _PngFindings()
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
class _JpegFindings:
    xmp: bytes | None = None
    has_c2pa: bool = False
    # Whether an APP1 "Exif" segment came before the scan, and whether the walk got there: a JPEG whose
    # segments were all read and held no EXIF has none for Pillow to find either.
    has_exif: bool = False
    complete: bool = False


def _walk_jpeg(data: bytes, errors: _Errors) -> _JpegFindings:
    """The XMP APP1 segment and any C2PA (APP11 JUMBF) segment, up to the start of the scan."""
    found = _JpegFindings()
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


def _find_raw_xmp(data: bytes) -> bytes | None:
    """The first ``<x:xmpmeta>`` element in the first XMP_SCAN_BYTES, for containers we do not walk."""
    start = data.find(b"<x:xmpmeta", 0, XMP_SCAN_BYTES)
    if start < 0:
        return None
    close = b"</x:xmpmeta>"
    end = data.find(close, start, start + MAX_XMP_BYTES)
    if end < 0:
        return data[start : start + MAX_XMP_BYTES]  # parsing will say it is unterminated
    return data[start : end + len(close)]


# ----------------------------------------------------------------------------------------------
# Readers


@dataclass
class _XmpFindings:
    creator_tool: str | None = None
    digital_source_type: str | None = None


def _read_xmp(packet: bytes, errors: _Errors) -> _XmpFindings:
    """IPTC DigitalSourceType and xmp:CreatorTool from an XMP packet.

    ElementTree's expat parser expands internal entities, so a packet with a DTD could be a billion
    laughs; XMP never needs one, and such a packet is refused before parsing.
    """
    found = _XmpFindings()
    if len(packet) > MAX_XMP_BYTES:
        errors.add(f"xmp: packet is {len(packet)} bytes, over the {MAX_XMP_BYTES}-byte limit")
        return found
    if b"\x00" in packet:
        # UTF-16 or UTF-32 (every ASCII character carries a NUL): the byte check below would not see a
        # DTD in it, and expat would parse one. XMP embedded in files is UTF-8 in practice.
        errors.add(XMP_NOT_UTF8)
        return found
    upper = packet.upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper:
        errors.add(XMP_DTD_REFUSED)
        return found
    # The packet wrapper (<?xpacket ...?>) and padding around <x:xmpmeta> are not one XML document.
    start = packet.find(b"<x:xmpmeta")
    end = packet.rfind(b"</x:xmpmeta>")
    if start >= 0 and end > start:
        packet = packet[start : end + len(b"</x:xmpmeta>")]
    try:
        root = ET.fromstring(packet)
    except (ET.ParseError, LookupError, ValueError) as exc:  # LookupError: an unknown declared encoding
        errors.add(f"xmp: not well-formed XML: {exc}")
        return found
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        local = element.tag.rsplit("}", 1)[-1]
        for attr, value in element.attrib.items():
            name = attr.rsplit("}", 1)[-1]
            if name == "DigitalSourceType" and found.digital_source_type is None:
                found.digital_source_type = value.strip()
            elif attr == f"{{{_XMP_NS}}}CreatorTool" and found.creator_tool is None:
                found.creator_tool = value.strip()
        if local == "DigitalSourceType" and found.digital_source_type is None:
            value = element.get(_RDF_RESOURCE) or "".join(element.itertext())
            found.digital_source_type = value.strip() or None
        elif element.tag == f"{{{_XMP_NS}}}CreatorTool" and found.creator_tool is None:
            found.creator_tool = "".join(element.itertext()).strip() or None
    return found


@dataclass
class _ExifFindings:
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


def _read_exif(data: bytes, fmt: str | None, png_exif: bytes | None, errors: _Errors) -> _ExifFindings:
    """Software (0x0131), Make (0x010F) and Model (0x0110) from IFD0.

    JPEG, WebP and TIFF go through ``Image.open`` restricted to that one format: Pillow reads their
    EXIF while parsing the header, without decoding pixels. A PNG's ``getexif`` decodes the whole
    image when the eXIf chunk comes after the pixels, so a PNG's eXIf chunk, found by our own walk, is
    handed to ``Image.Exif`` directly.
    """
    found = _ExifFindings()
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


def _png_text_generator(text: dict[str, str]) -> str | None:
    """The generator that PNG text chunks declare, from their structure first and tool names second."""
    for key, name in _PNG_KEY_GENERATORS.items():
        if key in text:
            return name
    params = text.get("parameters", "")
    if params.lstrip().startswith("{") and "fooocus" in params.lower():
        return "Fooocus"
    if _A1111_STEPS.search(params) and any(f in params for f in _A1111_FIELDS):
        # Forge writes the same infotext; its version field reads "Version: f2.0.1v1.10.1".
        return "Forge" if _FORGE_VERSION.search(params) else "AUTOMATIC1111"
    prompt, workflow = text.get("prompt", ""), text.get("workflow", "")
    if (prompt.lstrip().startswith("{") and '"class_type"' in prompt) or (
        workflow.lstrip().startswith("{") and '"nodes"' in workflow
    ):
        return "ComfyUI"
    for key in _PNG_NAME_KEYS:
        named = _match_generator(text.get(key))
        if named:
            return named
    return None


# ----------------------------------------------------------------------------------------------
# C2PA


def _c2pa_empty(*, present: bool = False, reason: str | None = None, checked: bool = False) -> dict[str, Any]:
    return {
        "checked": checked,
        "present": present,
        "valid": None,
        "trusted": None,
        "signer": None,
        "claim_generator": None,
        "actions": [],
        "validation_errors": [],
        "reason": reason,
    }


def _c2pa_installed() -> bool:
    """Whether c2pa-python is there to read with: the helper process imports it, this one never does
    (its native library is large and the extra optional)."""
    return importlib.util.find_spec("c2pa") is not None


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    """The claim generator: v1's string, or v2's claim_generator_info as "name/version" entries."""
    if isinstance(manifest.get("claim_generator"), str):
        return manifest["claim_generator"]
    parts = []
    for info in manifest.get("claim_generator_info") or []:
        if isinstance(info, dict) and isinstance(info.get("name"), str):
            version = info.get("version")
            parts.append(f"{info['name']}/{version}" if isinstance(version, str) else info["name"])
    return " ".join(parts) or None


def _manifest_actions(manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """(actions, software agent names) of a manifest's c2pa.actions assertions (v1 and v2)."""
    actions: list[dict[str, Any]] = []
    agents: list[str] = []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            if not isinstance(action, dict) or len(actions) >= MAX_REPORTED_ACTIONS:
                continue
            dst = action.get("digitalSourceType")
            actions.append({"action": str(action.get("action")), "digital_source_type": _source_term(dst)})
            agent = action.get("softwareAgent")
            if isinstance(agent, dict):
                agent = agent.get("name")
            if isinstance(agent, str):
                agents.append(agent)
    return actions, agents


def _validation_codes(store: dict[str, Any]) -> list[str]:
    """Failure codes for the active manifest (and its ingredients), else the flat validation_status."""
    codes: list[str] = []
    results = store.get("validation_results")
    if isinstance(results, dict):
        active = results.get("activeManifest") or {}
        codes += [str(item.get("code")) for item in active.get("failure") or [] if isinstance(item, dict)]
        for delta in results.get("ingredientDeltas") or []:
            failures = ((delta or {}).get("validationDeltas") or {}).get("failure") or []
            codes += [str(item.get("code")) for item in failures if isinstance(item, dict)]
    else:
        codes += [str(item.get("code")) for item in store.get("validation_status") or [] if isinstance(item, dict)]
    return list(dict.fromkeys(codes))


def _read_c2pa(
    data: bytes,
    fmt: str | None,
    container_seen: bool,
    trust_anchors_pem: str | None,
    timeout_s: float,
    errors: _Errors,
) -> tuple[dict[str, Any], list[str]]:
    """The C2PA reading (the ``Provenance.c2pa`` dict) and the tool names a valid manifest gives.

    ``container_seen``: our own walk found a C2PA box (PNG caBX, JPEG APP11 JUMBF). When c2pa-rs
    then fails to parse it, the manifest is present and broken, which counts as failing validation.
    """
    if fmt in ("png", "jpeg") and not container_seen:
        # Our own walk covers every place these two formats embed a manifest (caBX, APP11): none,
        # so no call into native code, which costs most of a read of an ordinary upload.
        return _c2pa_empty(checked=True), []
    if not _c2pa_installed():
        return _c2pa_empty(present=container_seen, reason=C2PA_NOT_INSTALLED), []
    if fmt is None or fmt not in _C2PA_FORMATS:
        reason = UNKNOWN_FORMAT if fmt is None else f"no C2PA manifest is read from {fmt}"
        return _c2pa_empty(present=container_seen, reason=reason), []
    if fmt not in ("png", "jpeg") and _C2PA_LABEL not in data:
        # Every manifest store is a JUMBF box labelled "c2pa": without those bytes anywhere there is
        # none to read, and the native reader need not walk the file (a GIF comment of 1-byte
        # sub-blocks cost it about 5 s a MiB).
        return _c2pa_empty(checked=True), []
    try:
        # In a helper process, killed past the timeout: native code cannot be stopped in this one.
        raw, trust_error = read_manifest_store(data, MEDIA_TYPES[fmt], trust_anchors_pem, timeout_s)
    except (TimeoutError, C2paReaderFailed) as exc:
        # Not read: that says nothing about the manifest, so it is neither valid nor broken.
        errors.add(f"c2pa: {exc}")
        return _c2pa_empty(present=container_seen, reason=str(exc), checked=True), []
    except C2paReadError as exc:
        message = str(exc)
        errors.add(f"c2pa: {message}")
        result = _c2pa_empty(present=container_seen, reason=message, checked=True)
        if container_seen:
            result["valid"] = False
            result["validation_errors"] = ["manifest.unreadable"]
        return result, []
    trust_reason = None
    if trust_error is not None:
        trust_reason = f"{TRUST_LIST_UNUSABLE}: {trust_error}"
        errors.add(f"c2pa: {trust_reason}")
    if raw is None:
        return _c2pa_empty(checked=True, reason=trust_reason), []
    try:
        store = json.loads(raw)
    except ValueError as exc:
        errors.add(f"c2pa: manifest store is not JSON: {exc}")
        return _c2pa_empty(present=True, reason="manifest store is not JSON", checked=True), []
    result = _c2pa_empty(present=True, checked=True, reason=trust_reason)
    state = store.get("validation_state")
    codes = _validation_codes(store)
    result["validation_errors"] = codes
    if state in ("Valid", "Trusted"):
        result["valid"] = True
    elif state == "Invalid":
        result["valid"] = False
    else:  # an older library without validation_state: any failure but an untrusted signer is fatal
        result["valid"] = not [c for c in codes if c != "signingCredential.untrusted"]
    if trust_anchors_pem is not None and trust_error is None:
        result["trusted"] = state == "Trusted"
    manifest = (store.get("manifests") or {}).get(store.get("active_manifest")) or {}
    signature = manifest.get("signature_info") or {}
    result["signer"] = signature.get("issuer") or signature.get("common_name")
    result["claim_generator"] = _claim_generator(manifest)
    actions, agents = _manifest_actions(manifest)
    result["actions"] = actions
    names = [result["claim_generator"], *agents] if result["valid"] else []
    return result, [n for n in names if n]


# ----------------------------------------------------------------------------------------------
# Entry point


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
            ``c2pa["trusted"]`` says whether the signer chains to one of them; without it, or when
            c2pa-rs cannot parse it (``c2pa["reason"]`` then says so), None. A signer outside the list
            does not make a manifest invalid: its claims still count toward ``declares_ai``, since
            nobody gains by falsely labelling an image as generated.
        timeout_s: How long the C2PA read may take; past it the helper process reading it is killed and
            the result says so.
    """
    if len(data) > max_bytes:
        reason = f"input is {len(data)} bytes, over the {max_bytes}-byte limit; not read"
        return Provenance(
            declares_ai=False,
            tampered=False,
            sources=(),
            generator=None,
            digital_source_type=None,
            c2pa=_c2pa_empty(reason=reason),
            details={**_empty_details(None), "skipped": reason},
        )

    errors = _Errors()
    fmt = sniff_format(data)
    details = _empty_details(fmt)
    png = _PngFindings()
    xmp_packet: bytes | None = None
    container_seen = False
    exif_possible = True
    if fmt == "png":
        png = _walk_png(data, errors)
        xmp_packet, container_seen = png.xmp, png.has_c2pa
    elif fmt == "jpeg":
        jpeg = _walk_jpeg(data, errors)
        xmp_packet, container_seen = jpeg.xmp, jpeg.has_c2pa
        # Most JPEGs carry no EXIF: then Pillow need not parse the file a second time to say so.
        exif_possible = jpeg.has_exif or not jpeg.complete
    if xmp_packet is None:
        xmp_packet = _find_raw_xmp(data)

    c2pa_info, c2pa_names = _read_c2pa(data, fmt, container_seen, trust_anchors_pem, timeout_s, errors)
    xmp = _read_xmp(xmp_packet, errors) if xmp_packet is not None else _XmpFindings()
    exif = _read_exif(data, fmt, png.exif, errors) if exif_possible else _ExifFindings()

    details["png_text"] = {k: _truncate(v) for k, v in list(png.text.items())[:MAX_REPORTED_KEYS]}
    details["exif_software"] = exif.software
    details["exif_make"] = exif.make
    details["exif_model"] = exif.model
    details["xmp_creator_tool"] = xmp.creator_tool
    details["xmp_digital_source_type"] = xmp.digital_source_type

    sources: list[str] = []
    generators: list[str] = []
    source_types: list[str] = []

    tampered = bool(c2pa_info["present"] and c2pa_info["valid"] is False)
    if c2pa_info["valid"]:
        terms = [a["digital_source_type"] for a in c2pa_info["actions"] if a["digital_source_type"]]
        source_types += terms
        name = next((g for g in map(_match_generator, c2pa_names) if g), None)
        if any(t in AI_SOURCE_TYPES for t in terms) or name:
            sources.append("c2pa")
        if name:
            generators.append(name)

    xmp_term = _source_term(xmp.digital_source_type)
    xmp_name = _match_generator(xmp.creator_tool)
    if xmp_term:
        source_types.append(xmp_term)
    if xmp_term in AI_SOURCE_TYPES or xmp_name:
        sources.append("xmp")
    if xmp_name:
        generators.append(xmp_name)

    png_name = _png_text_generator(png.text)
    if png_name:
        sources.append("png_text")
        generators.append(png_name)

    exif_name = _match_generator(exif.software)
    if exif_name:
        sources.append("exif")
        generators.append(exif_name)

    details["errors"] = errors.items
    ai_terms = [t for t in source_types if t in AI_SOURCE_TYPES]
    return Provenance(
        declares_ai=bool(sources),
        tampered=tampered,
        sources=tuple(sources),
        generator=generators[0] if generators else None,
        digital_source_type=next(iter(ai_terms or source_types), None),
        c2pa=c2pa_info,
        details=details,
    )


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
        return _truncate(value)
    if depth >= MAX_RECORD_DEPTH and isinstance(value, (dict, list, tuple)):
        return "…"
    if isinstance(value, dict):
        return {_truncate(str(k)): _bounded(v, depth + 1) for k, v in list(value.items())[:MAX_REPORTED_KEYS]}
    if isinstance(value, (list, tuple)):
        return [_bounded(v, depth + 1) for v in value[:MAX_REPORTED_KEYS]]
    return value
