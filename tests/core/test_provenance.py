"""fakescope.provenance: what a file declares about its origin, read from bytes built here.

Every asset is made in the test with Pillow (and, for C2PA, signed with a throwaway certificate chain
made with ``cryptography``), so nothing is downloaded and nothing depends on a sample file's history.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, features
from PIL.PngImagePlugin import PngInfo

from fakescope import c2pa_process, provenance
from fakescope.detector import Detector
from fakescope.imageio import ImageError, InputItem, decode_image
from fakescope.pipeline import classify_items
from fakescope.provenance import (
    C2PA_NOT_INSTALLED,
    GENERATOR_PATTERNS,
    MAX_RECORD_CHARS,
    XMP_DTD_REFUSED,
    XMP_NOT_UTF8,
    Provenance,
    provenance_summary,
    read_provenance,
)
from fakescope.provenance.exif import ExifFindings

A1111_PARAMETERS = "a cat, Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd-v1-5"
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CAPTURE = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"


def _image() -> Image.Image:
    return Image.new("RGB", (16, 16), (120, 60, 200))


def _png(text: dict[str, str] | None = None, *, itxt: dict[str, str] | None = None, zip_text: bool = False) -> bytes:
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value, zip=zip_text)
    for key, value in (itxt or {}).items():
        info.add_itxt(key, value, zip=zip_text)
    buf = io.BytesIO()
    _image().save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def _jpeg(exif_tags: dict[int, str] | None = None) -> bytes:
    exif = Image.Exif()
    for tag, value in (exif_tags or {}).items():
        exif[tag] = value
    buf = io.BytesIO()
    _image().save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _with_app1_xmp(jpeg: bytes, packet: bytes) -> bytes:
    """The JPEG with an XMP APP1 segment right after SOI, written by hand as a camera would."""
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + packet
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _xmp(*, source_type: str | None = None, creator_tool: str | None = None, as_attribute: bool = False) -> str:
    attrs, children = "", ""
    if source_type and as_attribute:
        attrs += f' Iptc4xmpExt:DigitalSourceType="{source_type}"'
    elif source_type:
        children += f"<Iptc4xmpExt:DigitalSourceType>{source_type}</Iptc4xmpExt:DigitalSourceType>"
    if creator_tool:
        children += f"<xmp:CreatorTool>{creator_tool}</xmp:CreatorTool>"
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        f' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"{attrs}>{children}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


def _png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, body start, body length) of each chunk of a well-formed PNG."""
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], pos + 8, length))
        pos += 12 + length
    return out


# ----------------------------------------------------------------------------------------------
# PNG text


def test_automatic1111_parameters_declare_ai() -> None:
    result = read_provenance(_png({"parameters": A1111_PARAMETERS}))

    assert result.declares_ai
    assert result.sources == ("png_text",)
    assert result.generator == "AUTOMATIC1111"
    assert not result.tampered
    assert result.details["png_text"]["parameters"] == A1111_PARAMETERS
    assert result.details["errors"] == []


def test_comfyui_prompt_and_workflow_declare_ai() -> None:
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}}}
    workflow = {"nodes": [{"id": 3, "type": "KSampler"}], "links": []}
    result = read_provenance(_png({"prompt": json.dumps(prompt), "workflow": json.dumps(workflow)}))

    assert result.declares_ai
    assert result.generator == "ComfyUI"
    assert result.sources == ("png_text",)
    assert set(result.details["png_text"]) == {"prompt", "workflow"}


def test_long_png_text_is_truncated_in_details() -> None:
    result = read_provenance(_png({"parameters": A1111_PARAMETERS + ", " + "x" * 5000}))

    assert result.generator == "AUTOMATIC1111"
    assert len(result.details["png_text"]["parameters"]) == provenance.DETAIL_CHARS + 1  # and an ellipsis


def test_novelai_software_chunk_names_the_generator() -> None:
    result = read_provenance(_png({"Software": "NovelAI", "Comment": '{"steps": 28}'}, zip_text=True))

    assert result.declares_ai
    assert result.generator == "NovelAI"
    assert result.details["png_text"]["Software"] == "NovelAI"


def test_a_prompt_naming_a_generator_is_not_a_declaration() -> None:
    result = read_provenance(_png({"Description": "an oil painting in the style of Midjourney"}))

    assert not result.declares_ai
    assert result.generator is None


def test_ztxt_bomb_is_capped() -> None:
    bomb = b"\x00" * (3 * provenance.MAX_PNG_TEXT_BYTES)
    body = b"Comment\x00\x00" + zlib.compress(bomb, 9)
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    plain = _png()
    data = plain[:33] + chunk + plain[33:]  # after IHDR

    result = read_provenance(data)

    cap = provenance.MAX_PNG_TEXT_BYTES
    assert f"png: text chunk 'Comment' inflates past {cap} bytes; read the first {cap}" in result.details["errors"]
    assert not result.declares_ai


def test_text_chunks_that_fail_to_inflate_still_spend_the_budget() -> None:
    # Thousands of small zlib bombs whose checksum fails at the end: each inflated to its cap before
    # failing, and none counted, so a 16 MiB file cost 42 s here and 40 s more in Pillow.
    z = zlib.compress(b"\x00" * (2 * 1024 * 1024), 9)
    body = b"Comment\x00\x00" + z[:-4] + bytes(4)  # a bad adler32
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    plain = _png()
    data = plain[:33] + chunk * 2000 + plain[33:]

    errors = read_provenance(data).details["errors"]

    assert any("does not inflate" in e for e in errors)
    # The budget ran out after a few of them: the rest were never inflated.
    assert f"png: text chunks exceed {provenance.MAX_PNG_TEXT_TOTAL} bytes; the rest are not read" in errors
    # Pillow is never handed such a file.
    with pytest.raises(ImageError, match="more than 64 compressed text chunks"):
        decode_image(data)


@pytest.mark.parametrize("cut", [8, 20, 33, 40, 60, -20, -13, -5])
def test_truncated_png_does_not_raise(cut: int) -> None:
    data = _png({"parameters": A1111_PARAMETERS})

    result = read_provenance(data[:cut])

    assert isinstance(result, Provenance)
    assert any(e.startswith("png: ") for e in result.details["errors"])


def test_corrupt_png_every_prefix_and_lengths_past_the_buffer() -> None:
    data = bytearray(_png({"parameters": A1111_PARAMETERS}))
    for cut in range(0, len(data), 17):
        read_provenance(bytes(data[:cut]))
    data[33:37] = b"\xff\xff\xff\xf0"  # the first text chunk claims 4 GB

    result = read_provenance(bytes(data))

    assert "png: chunk b'tEXt' at offset 33 runs past the end of the file" in result.details["errors"]
    assert not result.declares_ai


# ----------------------------------------------------------------------------------------------
# EXIF


def test_exif_software_names_the_generator() -> None:
    result = read_provenance(_jpeg({0x0131: "Adobe Firefly"}))

    assert result.declares_ai
    assert result.sources == ("exif",)
    assert result.generator == "Adobe Firefly"
    assert result.details["exif_software"] == "Adobe Firefly"


def test_camera_jpeg_declares_nothing() -> None:
    result = read_provenance(_jpeg({0x010F: "Canon", 0x0110: "Canon EOS R5", 0x0131: "GIMP 2.10"}))

    assert not result.declares_ai
    assert result.sources == ()
    assert result.generator is None
    assert result.digital_source_type is None
    assert (result.details["exif_make"], result.details["exif_model"]) == ("Canon", "Canon EOS R5")
    assert result.details["exif_software"] == "GIMP 2.10"
    assert result.details["errors"] == []


def test_pillow_reads_a_jpegs_exif_only_where_there_may_be_some(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[bytes] = []
    real = provenance.read_exif

    def recording(data: bytes, *rest: Any) -> ExifFindings:
        opened.append(data)
        return real(data, *rest)

    monkeypatch.setattr(provenance, "read_exif", recording)
    buf = io.BytesIO()
    _image().save(buf, "JPEG")  # no EXIF segment
    plain = buf.getvalue()
    with_exif = _jpeg({0x0131: "Adobe Firefly"})
    cut_short = plain[:2] + b"\x00" + plain[2:]  # the segment walk stops at the stray byte

    assert read_provenance(plain).details["errors"] == [] and opened == []
    assert read_provenance(with_exif).generator == "Adobe Firefly" and opened == [with_exif]
    read_provenance(cut_short)
    assert opened == [with_exif, cut_short]  # a walk that did not reach the scan proves nothing


def test_png_exif_chunk_is_read_without_decoding() -> None:
    exif = Image.Exif()
    exif[0x0131] = "Midjourney"
    buf = io.BytesIO()
    _image().save(buf, "PNG", exif=exif.tobytes())

    result = read_provenance(buf.getvalue())

    assert result.sources == ("exif",)
    assert result.generator == "Midjourney"


# ----------------------------------------------------------------------------------------------
# XMP


@pytest.mark.parametrize("as_attribute", [False, True])
def test_jpeg_xmp_digital_source_type_declares_ai(as_attribute: bool) -> None:
    packet = _xmp(source_type=TRAINED, as_attribute=as_attribute).encode()
    result = read_provenance(_with_app1_xmp(_jpeg(), packet))

    assert result.declares_ai
    assert result.sources == ("xmp",)
    assert result.digital_source_type == "trainedAlgorithmicMedia"
    assert result.details["xmp_digital_source_type"] == TRAINED
    assert result.generator is None


@pytest.mark.parametrize("zip_text", [False, True])
def test_png_itxt_xmp_declares_ai(zip_text: bool) -> None:
    data = _png(itxt={"XML:com.adobe.xmp": _xmp(source_type=TRAINED, creator_tool="Midjourney 6")}, zip_text=zip_text)
    result = read_provenance(data)

    assert result.declares_ai
    assert result.sources == ("xmp",)
    assert result.digital_source_type == "trainedAlgorithmicMedia"
    assert result.generator == "Midjourney"
    assert result.details["xmp_creator_tool"] == "Midjourney 6"
    assert "XML:com.adobe.xmp" not in result.details["png_text"]


@pytest.mark.skipif(not features.check("webp"), reason="Pillow was built without WebP")
def test_webp_xmp_is_found_by_the_raw_search() -> None:
    buf = io.BytesIO()
    _image().save(buf, "WEBP", xmp=_xmp(source_type=TRAINED).encode())

    result = read_provenance(buf.getvalue())

    assert result.details["format"] == "webp"
    assert result.digital_source_type == "trainedAlgorithmicMedia"
    assert result.declares_ai


def test_digital_capture_is_reported_but_not_ai() -> None:
    result = read_provenance(_with_app1_xmp(_jpeg(), _xmp(source_type=CAPTURE, creator_tool="GIMP 2.10").encode()))

    assert not result.declares_ai
    assert result.digital_source_type == "digitalCapture"
    assert result.details["xmp_creator_tool"] == "GIMP 2.10"


def test_xmp_with_a_dtd_is_refused() -> None:
    packet = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        + _xmp(source_type=TRAINED).replace('rdf:about=""', 'rdf:about="&lol2;"')
    ).encode()

    result = read_provenance(_with_app1_xmp(_jpeg({0x0131: "Adobe Firefly"}), packet))

    assert XMP_DTD_REFUSED in result.details["errors"]
    assert result.digital_source_type is None
    assert result.sources == ("exif",)  # the other readers still ran


def test_xmp_in_utf16_cannot_hide_a_dtd() -> None:
    text = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>' + _xmp(source_type=TRAINED)
    # The DTD check reads bytes: in UTF-16 "<!DOCTYPE" is not those bytes, and expat would parse it.
    result = read_provenance(_with_app1_xmp(_jpeg({0x0131: "Adobe Firefly"}), text.encode("utf-16")))
    assert XMP_NOT_UTF8 in result.details["errors"]
    assert result.digital_source_type is None


def test_malformed_xmp_is_an_error_not_an_exception() -> None:
    result = read_provenance(_with_app1_xmp(_jpeg(), b"<x:xmpmeta><rdf:RDF></x:xmpmeta>"))

    assert any(e.startswith("xmp: not well-formed XML") for e in result.details["errors"])
    assert not result.declares_ai


# ----------------------------------------------------------------------------------------------
# Limits, generators, serialisation


def test_input_over_max_bytes_is_not_read() -> None:
    data = _png({"parameters": A1111_PARAMETERS})

    result = read_provenance(data, max_bytes=100)

    reason = f"input is {len(data)} bytes, over the 100-byte limit; not read"
    assert result.details["skipped"] == reason
    assert result.c2pa.checked is False
    assert result.c2pa.reason == reason
    assert not result.declares_ai


def test_unknown_bytes_are_read_without_error() -> None:
    result = read_provenance(b"not an image at all")

    assert result.details["format"] is None
    assert result.c2pa.checked is False
    assert not result.declares_ai


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("stable-diffusion-webui v1.7.0", "AUTOMATIC1111"),
        ("ComfyUI", "ComfyUI"),
        ("Stable Diffusion XL", "Stable Diffusion"),
        ("DALL·E 3", "DALL-E"),
        ("OpenAI-API", "OpenAI"),
        ("Adobe_Firefly", "Adobe Firefly"),
        ("Google Imagen 3", "Google Imagen"),
        ("Made with Google AI", "Google (SynthID)"),
        ("Bing Image Creator", "Bing Image Creator"),
        ("Microsoft Designer", "Microsoft Designer"),
        ("Meta AI", "Meta AI"),
        ("Leonardo.Ai", "Leonardo.Ai"),
        ("RunwayML Gen-3", "Runway"),
        ("ideogram.ai", "Ideogram"),
        ("FLUX.1 [dev]", "FLUX (Black Forest Labs)"),
        ("InvokeAI 4.2", "InvokeAI"),
        ("Fooocus 2.5", "Fooocus"),
        ("Krita AI Diffusion 1.20", "Krita AI Diffusion"),
        ("GIMP 2.10", None),
        ("Adobe Photoshop 25.0", None),
        ("Krita 5.2", None),
        ("f.lux", None),
        ("Imagenomic Portraiture", None),
    ],
)
def test_generator_names(text: str, name: str | None) -> None:
    assert provenance.match_generator(text) == name


def test_generator_patterns_are_a_tuple_of_pairs() -> None:
    assert all(isinstance(p, str) and isinstance(n, str) for p, n in GENERATOR_PATTERNS)


def test_to_dict_is_json_ready_and_a_copy() -> None:
    result = read_provenance(_png({"parameters": A1111_PARAMETERS}))

    out = result.to_dict()
    out["details"]["png_text"].clear()

    assert json.loads(json.dumps(out))["sources"] == ["png_text"]
    assert result.details["png_text"]  # untouched


# ----------------------------------------------------------------------------------------------
# C2PA


def test_c2pa_on_a_file_without_a_manifest() -> None:
    pytest.importorskip("c2pa")

    result = read_provenance(_jpeg())

    assert result.c2pa.to_dict() == {
        "checked": True,
        "present": False,
        "valid": None,
        "trusted": None,
        "signer": None,
        "claim_generator": None,
        "actions": [],
        "validation_errors": [],
        "reason": None,
    }
    assert result.details["errors"] == []
    assert not result.tampered


def _with_cabx(png: bytes) -> bytes:
    """``png`` with a (meaningless) C2PA box before IEND: where c2pa would have to look."""
    import struct
    import zlib

    body = b"jumb" + b"\0" * 16
    chunk = struct.pack(">I", len(body)) + b"caBX" + body + struct.pack(">I", zlib.crc32(b"caBX" + body))
    return png[:-12] + chunk + png[-12:]


def test_a_png_or_jpeg_without_a_c2pa_box_is_not_handed_to_c2pa(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any) -> tuple[str | None, str | None]:
        raise AssertionError("c2pa was called")

    monkeypatch.setattr(provenance.c2pa, "read_manifest_store", never)
    for data in (_png({"parameters": A1111_PARAMETERS}), _jpeg()):
        result = read_provenance(data)
        assert result.c2pa.checked is True and result.c2pa.present is False


def test_without_c2pa_the_other_readers_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "c2pa", None)  # import c2pa now raises ImportError

    result = read_provenance(_with_cabx(_png({"parameters": A1111_PARAMETERS})))

    assert result.c2pa.checked is False
    assert result.c2pa.reason == C2PA_NOT_INSTALLED
    assert result.generator == "AUTOMATIC1111"


# Sub-blocks that keep c2pa-rs walking well past the 2 s read limit: a million took 3.5 s on the
# two-core development machine and under 2 s on a quiet one, which let the read finish in time.
OVERRUNNING_SUB_BLOCKS = 4_000_000


def _slow_gif(sub_blocks: int) -> bytes:
    """A GIF with a comment of ``sub_blocks`` 1-byte sub-blocks (c2pa-rs walks them at seconds a MiB)
    and a manifest label, so that it is handed to the native reader."""
    buf = io.BytesIO()
    Image.new("P", (32, 32)).save(buf, "GIF")
    gif = buf.getvalue()
    at = gif.index(b"\x2c")  # the image descriptor: extensions go before it
    return gif[:at] + b"\x21\xfe" + b"\x01x" * sub_blocks + b"\x00" + b"\x21\xfe\x04c2pa\x00" + gif[at:]


def test_a_c2pa_read_that_overruns_is_killed_and_the_image_is_answered(tiny_checkpoint: Path) -> None:
    pytest.importorskip("c2pa")
    # A first read starts the helper process (its start has a wait of its own): the overrun must end it.
    assert read_provenance(_with_cabx(_png())).c2pa.checked is True
    helper = c2pa_process._HELPER.proc
    assert helper is not None and helper.poll() is None
    detector = Detector.load(tiny_checkpoint, device="cpu")

    t0 = time.monotonic()
    (result,) = classify_items(
        detector, [InputItem("slow.gif", lambda: _slow_gif(OVERRUNNING_SUB_BLOCKS))], overlays=False
    )
    took = time.monotonic() - t0

    assert result.ok and result.prediction in ("real", "fake"), result.error
    assert result.provenance is not None
    stopped = "c2pa read did not finish in 2 s; the reader was stopped"
    assert result.provenance["c2pa"]["reason"] == stopped
    assert f"c2pa: {stopped}" in result.provenance["details"]["errors"]
    # Killed and reaped, not left reading: nothing of it runs on.
    with pytest.raises(ProcessLookupError):
        os.kill(helper.pid, 0)
    assert c2pa_process._HELPER.proc is None
    print(f"the overrunning read was stopped; the image answered in {took:.1f} s")
    # The next file that could hold a manifest gets a fresh helper.
    assert read_provenance(_with_cabx(_png())).c2pa.reason != stopped
    assert c2pa_process._HELPER.proc is not None and c2pa_process._HELPER.proc.pid != helper.pid


def _ca(name: str) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),  # sign, certs, CRLs
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture(scope="module")
def signing() -> dict[str, Any]:
    """A root CA and an end-entity signing certificate (C2PA refuses a self-signed leaf), as PEM."""
    pytest.importorskip("c2pa")
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca_cert = _ca("Fakescope Test Root")
    _, other_ca = _ca("Some Other Root")
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "Fakescope Test Signer"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fakescope Test"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def pem(cert: Any) -> bytes:
        return bytes(cert.public_bytes(serialization.Encoding.PEM))

    return {
        "chain": pem(leaf) + pem(ca_cert),
        "key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "ca_pem": pem(ca_cert).decode(),
        "other_ca_pem": pem(other_ca).decode(),
    }


def _sign(signing: dict[str, Any], source_type: str, fmt: str = "png") -> bytes:
    import c2pa  # type: ignore[import-untyped]  # c2pa-python ships no stubs

    manifest = {
        "claim_generator_info": [{"name": "fakescope-test", "version": "1.0"}],
        "title": "generated.png",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": source_type}]},
            }
        ],
    }
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, signing["chain"], signing["key"], None)
    out = io.BytesIO()
    with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest) as builder:
        builder.sign(signer, f"image/{fmt}", io.BytesIO(_png() if fmt == "png" else _jpeg()), out)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_valid_c2pa_manifest_declares_ai(signing: dict[str, Any], fmt: str) -> None:
    result = read_provenance(_sign(signing, TRAINED, fmt))

    assert result.declares_ai
    assert not result.tampered
    assert result.sources == ("c2pa",)
    assert result.digital_source_type == "trainedAlgorithmicMedia"
    assert result.c2pa.checked and result.c2pa.present and result.c2pa.valid
    assert result.c2pa.trusted is None  # no trust list configured
    assert result.c2pa.signer == "Fakescope Test"
    assert result.c2pa.claim_generator == "fakescope-test/1.0"
    assert result.c2pa.actions == [{"action": "c2pa.created", "digital_source_type": "trainedAlgorithmicMedia"}]
    assert result.c2pa.validation_errors == []
    assert result.details["errors"] == []


def test_an_unparsable_trust_list_is_reported_and_ignored(signing: dict[str, Any]) -> None:
    good = _sign(signing, TRAINED)
    bad = bytearray(good)
    _, start, _ = next(c for c in _png_chunks(good) if c[0] == b"IDAT")
    bad[start + 2] ^= 0xFF

    read_good = read_provenance(good, trust_anchors_pem="not a certificate")
    read_bad = read_provenance(bytes(bad), trust_anchors_pem="not a certificate")

    assert read_good.c2pa.valid is True
    assert read_good.c2pa.trusted is None
    assert read_good.c2pa.reason is not None
    assert read_good.c2pa.reason.startswith(f"{provenance.TRUST_LIST_UNUSABLE}: ")
    assert not read_good.tampered and read_good.declares_ai
    assert read_bad.tampered  # a broken configuration does not hide tampering


def test_trust_list_decides_trusted(signing: dict[str, Any]) -> None:
    data = _sign(signing, TRAINED)

    ours = read_provenance(data, trust_anchors_pem=signing["ca_pem"])
    theirs = read_provenance(data, trust_anchors_pem=signing["other_ca_pem"])

    assert ours.c2pa.trusted is True
    assert ours.c2pa.validation_errors == []
    assert theirs.c2pa.trusted is False
    assert theirs.c2pa.valid is True  # signed correctly, by someone the operator does not trust
    assert "signingCredential.untrusted" in theirs.c2pa.validation_errors


def test_valid_manifest_of_a_capture_does_not_declare_ai(signing: dict[str, Any]) -> None:
    result = read_provenance(_sign(signing, CAPTURE))

    assert not result.declares_ai
    assert result.c2pa.valid is True
    assert result.digital_source_type == "digitalCapture"


def test_edited_pixels_make_the_manifest_tampered(signing: dict[str, Any]) -> None:
    data = bytearray(_sign(signing, TRAINED))
    _, start, _ = next(c for c in _png_chunks(bytes(data)) if c[0] == b"IDAT")
    data[start + 2] ^= 0xFF

    result = read_provenance(bytes(data))

    assert result.tampered
    assert result.c2pa.present is True
    assert result.c2pa.valid is False
    assert "assertion.dataHash.mismatch" in result.c2pa.validation_errors
    # Its claims are reported, never counted.
    assert result.c2pa.actions[0]["digital_source_type"] == "trainedAlgorithmicMedia"
    assert not result.declares_ai
    assert result.sources == ()
    assert result.digital_source_type is None


def test_edited_jpeg_scan_makes_the_manifest_tampered(signing: dict[str, Any]) -> None:
    data = bytearray(_sign(signing, TRAINED, "jpeg"))
    data[-10] ^= 0xFF  # inside the entropy-coded scan, before EOI

    result = read_provenance(bytes(data))

    assert result.tampered
    assert "assertion.dataHash.mismatch" in result.c2pa.validation_errors
    assert not result.declares_ai


@pytest.mark.parametrize(("fmt", "cut"), [("png", "after_manifest"), ("png", 3000), ("jpeg", 3000), ("jpeg", -100)])
def test_truncated_signed_file_is_tampered(signing: dict[str, Any], fmt: str, cut: int | str) -> None:
    data = _sign(signing, TRAINED, fmt)
    if cut == "after_manifest":
        cut = next(c for c in _png_chunks(data) if c[0] == b"IDAT")[1] + 4

    result = read_provenance(data[: int(cut)])

    assert result.tampered
    assert result.c2pa.valid is False
    assert not result.declares_ai
    assert any(e.startswith("c2pa: ") for e in result.details["errors"])


def test_a_result_carries_a_bounded_record_whatever_the_file_declares() -> None:
    huge = "x" * 5_000_000
    record = {
        "declares_ai": True,
        "tampered": False,
        "sources": ["c2pa"] * 10_000,
        "generator": "Midjourney",
        "digital_source_type": huge,
        "c2pa": {
            "present": True,
            "valid": True,
            "signer": huge,
            "assertions": [{"a": {"b": {"c": {"d": {"e": {"f": huge}}}}}}] * 1000,
        },
        "details": {f"key{i}": huge for i in range(10_000)},
    }
    summary = provenance_summary(record)
    assert summary is not None and len(json.dumps(summary)) <= MAX_RECORD_CHARS
    # What a verdict rests on survives: the declaration, the generator, the manifest's validity.
    assert summary["declares_ai"] is True and summary["generator"] == "Midjourney"
    assert summary["c2pa"]["present"] is True and summary["c2pa"]["valid"] is True
    assert summary["truncated"] is True
    # A small record is carried whole.
    small = {**record, "sources": ["c2pa"], "digital_source_type": "trainedAlgorithmicMedia", "details": {}}
    small["c2pa"] = {"present": True, "valid": True, "signer": "Adobe"}
    assert provenance_summary(small) == small


def test_a_jpeg_of_empty_segments_is_walked_only_so_far() -> None:
    # 48 MiB of fill bytes and empty segments before the scan took 20 s here and 27 s in Pillow.
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    real = buf.getvalue()
    data = real[:2] + b"\xff\x01" * (4 * 1024 * 1024) + real[2:]

    errors = read_provenance(data).details["errors"]

    assert "jpeg: more than 4096 markers before the scan; the rest are not read" in errors
    with pytest.raises(ImageError, match="more than 4096 markers"):
        decode_image(data)
    decode_image(real)  # a real one is untouched


def test_a_reader_that_dies_leaves_the_manifest_unread_not_broken() -> None:
    pytest.importorskip("c2pa")
    # A read in progress whose helper is killed (a crash, or its own CPU or memory cap) ...
    assert read_provenance(_with_cabx(_png())).c2pa.checked is True  # a helper is running
    helper = c2pa_process._HELPER.proc
    assert helper is not None
    threading.Timer(0.5, helper.kill).start()
    with pytest.raises(c2pa_process.C2paReaderFailed, match=r"the c2pa reader died \(signal 9\)"):
        c2pa_process.read_manifest_store(_slow_gif(OVERRUNNING_SUB_BLOCKS), "image/gif", None, 30)
    assert c2pa_process._HELPER.proc is None


def test_a_file_whose_read_failed_is_not_tampered(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("c2pa")

    def died(*args: Any) -> tuple[str | None, str | None]:
        raise c2pa_process.C2paReaderFailed("the c2pa reader died (signal 24)")

    monkeypatch.setattr(provenance.c2pa, "read_manifest_store", died)
    result = read_provenance(_with_cabx(_png({"parameters": A1111_PARAMETERS})))
    # ... says nothing about the manifest: present, unread, neither valid nor broken.
    assert result.c2pa.present and result.c2pa.valid is None and not result.tampered
    assert result.c2pa.reason == "the c2pa reader died (signal 24)"
    assert result.generator == "AUTOMATIC1111"  # the other readers still ran


def test_native_c2pa_reads_only_files_that_could_hold_a_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("c2pa")
    calls: list[int] = []

    def count(*args: Any) -> tuple[str | None, str | None]:
        calls.append(1)
        return None, None

    monkeypatch.setattr(provenance.c2pa, "read_manifest_store", count)
    # A GIF whose comment is 1-byte sub-blocks (the native reader's slow path) and no manifest label.
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, "GIF", comment=b"x" * 10_000)
    assert read_provenance(buf.getvalue(), timeout_s=0.01).c2pa.checked is True
    assert calls == []
    # One that could hold one is read.
    assert read_provenance(_slow_gif(10)).c2pa.checked is True
    assert calls == [1]


def test_the_decision_is_a_function_of_the_findings_alone() -> None:
    from fakescope.provenance.c2pa import C2paReading
    from fakescope.provenance.decision import decide
    from fakescope.provenance.exif import ExifFindings
    from fakescope.provenance.xmp import XmpFindings

    nothing = decide(C2paReading(), [], XmpFindings(), {}, ExifFindings())
    assert not nothing.declares_ai and not nothing.tampered and nothing.sources == ()
    broken = C2paReading(
        checked=True,
        present=True,
        valid=False,
        actions=[{"action": "c2pa.created", "digital_source_type": "trainedAlgorithmicMedia"}],
    )
    # A broken manifest is tampering, and its claims do not count.
    assert decide(broken, ["Adobe Firefly"], XmpFindings(), {}, ExifFindings()).declares_ai is False
    assert decide(broken, [], XmpFindings(), {}, ExifFindings()).tampered is True
    both = decide(
        C2paReading(checked=True, present=True, valid=True),
        [],
        XmpFindings(creator_tool="Midjourney", digital_source_type=TRAINED),
        {},
        ExifFindings(software="NovelAI"),
    )
    assert both.sources == ("xmp", "exif")
    assert (both.generator, both.digital_source_type) == ("Midjourney", "trainedAlgorithmicMedia")
