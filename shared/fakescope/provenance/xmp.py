"""IPTC's digital source type and xmp:CreatorTool from an XMP packet, refusing any packet with a DTD."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from fakescope.provenance.common import MAX_XMP_BYTES, XMP_DTD_REFUSED, XMP_NOT_UTF8, Errors

__all__ = ["XmpFindings", "read_xmp"]

_XMP_NS = "http://ns.adobe.com/xap/1.0/"
_RDF_RESOURCE = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}resource"


@dataclass
class XmpFindings:
    creator_tool: str | None = None
    digital_source_type: str | None = None


def read_xmp(packet: bytes, errors: Errors) -> XmpFindings:
    """IPTC DigitalSourceType and xmp:CreatorTool from an XMP packet.

    ElementTree's expat parser expands internal entities, so a packet with a DTD could be a billion
    laughs; XMP never needs one, and such a packet is refused before parsing.
    """
    found = XmpFindings()
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
