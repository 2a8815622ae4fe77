"""The decision, a pure function of what the readers found: does the file declare that a model made
it, which readers said so, which generator, and was a signed manifest broken.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fakescope.provenance.c2pa import C2paReading
from fakescope.provenance.common import AI_SOURCE_TYPES, match_generator, source_term
from fakescope.provenance.exif import ExifFindings
from fakescope.provenance.xmp import XmpFindings

__all__ = ["Decision", "decide", "png_text_generator"]

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


def png_text_generator(text: dict[str, str]) -> str | None:
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
        named = match_generator(text.get(key))
        if named:
            return named
    return None


@dataclass(frozen=True)
class Decision:
    """What the readers' findings say together (the fields of :class:`~fakescope.provenance.Provenance`
    of the same names)."""

    declares_ai: bool
    tampered: bool
    sources: tuple[str, ...]
    generator: str | None
    digital_source_type: str | None


def decide(
    c2pa: C2paReading,
    c2pa_names: Sequence[str],
    xmp: XmpFindings,
    png_text: dict[str, str],
    exif: ExifFindings,
) -> Decision:
    """The decision from each reader's findings; ``c2pa_names``: the tool names a valid manifest gives.

    Sources come in the order ``c2pa``, ``xmp``, ``png_text``, ``exif``; the first generator named
    wins, and an AI digital source type is preferred over any other term.
    """
    sources: list[str] = []
    generators: list[str] = []
    source_types: list[str] = []

    tampered = bool(c2pa.present and c2pa.valid is False)
    if c2pa.valid:
        terms = [a["digital_source_type"] for a in c2pa.actions if a["digital_source_type"]]
        source_types += terms
        name = next((g for g in map(match_generator, c2pa_names) if g), None)
        if any(t in AI_SOURCE_TYPES for t in terms) or name:
            sources.append("c2pa")
        if name:
            generators.append(name)

    xmp_term = source_term(xmp.digital_source_type)
    xmp_name = match_generator(xmp.creator_tool)
    if xmp_term:
        source_types.append(xmp_term)
    if xmp_term in AI_SOURCE_TYPES or xmp_name:
        sources.append("xmp")
    if xmp_name:
        generators.append(xmp_name)

    png_name = png_text_generator(png_text)
    if png_name:
        sources.append("png_text")
        generators.append(png_name)

    exif_name = match_generator(exif.software)
    if exif_name:
        sources.append("exif")
        generators.append(exif_name)

    ai_terms = [t for t in source_types if t in AI_SOURCE_TYPES]
    return Decision(
        declares_ai=bool(sources),
        tampered=tampered,
        sources=tuple(sources),
        generator=generators[0] if generators else None,
        digital_source_type=next(iter(ai_terms or source_types), None),
    )
