"""What every provenance reader shares: the bounds on what a file may make us read and report, the
error list, and the names that declare a generator.
"""

from __future__ import annotations

import re

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
# Markers (fill bytes included) walked before a JPEG's scan: a real file has a few dozen.
MAX_JPEG_MARKERS = 4096
# What one result may carry of a file's declarations, whatever the file says: every string, list and
# mapping bounded (a 0.06 MiB upload once produced 16 MiB of provenance per item), and the record
# as JSON at most this many characters.
MAX_RECORD_CHARS = 16 * 1024
MAX_RECORD_DEPTH = 6

# Lines the results carry when a reader could not read.
C2PA_NOT_INSTALLED = "c2pa-python is not installed"
UNKNOWN_FORMAT = "unrecognised file format"
TRUST_LIST_UNUSABLE = "trust list not usable, read without it"
XMP_DTD_REFUSED = "xmp: packet declares a DTD or entities; refused"
XMP_NOT_UTF8 = "xmp: packet is UTF-16 or UTF-32, not UTF-8; refused"


def match_generator(text: str | None) -> str | None:
    """The first generator in GENERATOR_PATTERNS that ``text`` names as a whole word."""
    if not text:
        return None
    for regex, name in _GENERATOR_RES:
        if regex.search(text):
            return name
    return None


def source_term(value: str | None) -> str | None:
    """The IPTC term of a digital source type: the last segment of its URI, or the value itself."""
    if not value:
        return None
    term = value.strip().rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1]
    return term or None


def truncate(value: str) -> str:
    return value if len(value) <= DETAIL_CHARS else value[:DETAIL_CHARS] + "…"


class Errors:
    """Collects one line per failure, capped, so a file built to fail everywhere stays small."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        if len(self.items) < MAX_REPORTED_ERRORS:
            self.items.append(message)
