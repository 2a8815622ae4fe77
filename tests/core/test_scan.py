import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakescope.cli import main
from fakescope.detector import Detector
from fakescope.scan import run_scan
from tests.core.conftest import synth_image


def _png_header_bomb(w: int, h: int) -> bytes:
    """A valid, fully decodable 1-bit PNG of ``w`` x ``h`` pixels that compresses to a few hundred KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + b"\0" * ((w + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * 1000) for _ in range(h // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for i in range(6):
        label = "fake" if i % 2 else "real"
        Image.fromarray(synth_image(label, i)).save(d / f"good_{i}.png")
    big = io.BytesIO()
    Image.fromarray(synth_image("real", 99)).resize((300, 200)).save(big, format="JPEG")
    (d / "good_large.jpg").write_bytes(big.getvalue())
    (d / "zero.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    (d / "truncated.jpg").write_bytes(big.getvalue()[: len(big.getvalue()) // 2])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2)
    (d / "bomb.png").write_bytes(_png_header_bomb(20_000, 20_000))
    return d


BAD = {
    "zero.jpg": "empty file",
    "notes.txt": "not an image",
    "truncated.jpg": "truncated",
    "corrupt.png": "",
    "bomb.png": "400000000 pixels, over the limit of 40000000",
}


def test_scan_reports_each_bad_file_and_classifies_the_rest(
    mixed_folder: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = run_scan([mixed_folder], out, checkpoint=tiny_checkpoint, device="cpu", batch_size=4, progress=False)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_file = {r["file"]: r for r in records}
    assert len(records) == summary.total == 12 and summary.errors == 5
    for name, reason in BAD.items():
        rec = by_file[name]
        assert rec["prediction"] is None and rec["fake_probability"] is None and rec["overlay"] is None
        assert reason in rec["error"]
    det = Detector.load(tiny_checkpoint, device="cpu")
    for i in range(6):
        rec = by_file[f"good_{i}.png"]
        assert rec["error"] is None
        # Each good image gets exactly what the detector says on its own, whatever its neighbours were.
        expected = float(det.predict(det.prepare(Image.open(mixed_folder / f"good_{i}.png"))[None])[0])
        assert rec["fake_probability"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert rec["prediction"] == ("fake" if expected >= 0.5 else "real")
        assert Image.open(out / rec["overlay"]).format == "PNG"
    assert by_file["good_large.jpg"]["width"] == 300
    task1 = json.loads((out / "task1.json").read_text())
    # Stems are not all integers: indices are positions in sorted order, errors left out.
    names = sorted(by_file)
    assert [e["index"] for e in task1] == [names.index(n) + 1 for n in names if by_file[n]["error"] is None]
    html = (out / "report.html").read_text()
    assert "bomb.png" in html and "good_3.png" in html and 'value="fake"' in html


def test_scan_numeric_stems_and_archives(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(tmp_path / "batch.zip", "w") as zf:
        for i in (3, 1, 2):
            buf = io.BytesIO()
            Image.fromarray(synth_image("fake", i)).save(buf, format="PNG")
            zf.writestr(f"{i}.png", buf.getvalue())
    out = tmp_path / "out"
    assert (
        main(["scan", str(tmp_path / "batch.zip"), "--out", str(out), "--checkpoint", str(tiny_checkpoint), "-q"]) == 0
    )
    assert [e["index"] for e in json.loads((out / "task1.json").read_text())] == [1, 2, 3]


def test_scan_is_batch_invariant(tiny_checkpoint: Path, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for i in range(5):
        Image.fromarray(synth_image("real", i)).save(d / f"{i}.png")
    probs = []
    for bs in (1, 5):
        run_scan([d], tmp_path / f"o{bs}", checkpoint=tiny_checkpoint, device="cpu", batch_size=bs, progress=False)
        lines = (tmp_path / f"o{bs}" / "results.jsonl").read_text().splitlines()
        probs.append(np.array([json.loads(x)["fake_probability"] for x in lines]))
    np.testing.assert_allclose(probs[0], probs[1], rtol=1e-4, atol=1e-6)


def test_scan_explain_names_taxonomy_artifacts_deterministically(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from fakescope.explain.taxonomy import BY_NAME

    # A checkpoint that calls everything fake, so every image gets explained.
    fake_all = tmp_path / "fake_all"
    fake_all.mkdir()
    (fake_all / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (fake_all / "domain.safetensors").write_bytes((tiny_checkpoint / "domain.safetensors").read_bytes())
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    state["head.bias"] = state["head.bias"].new_tensor([-20.0, 20.0])
    save_file(state, str(fake_all / "model.safetensors"))
    d = tmp_path / "in"
    d.mkdir()
    for i in range(4):
        Image.fromarray(synth_image("fake", i)).resize((96, 96)).save(d / f"{i + 1}.png")
    (d / "5.png").write_bytes(b"")
    outputs = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        run_scan([d], out, checkpoint=fake_all, device="cpu", explain=True, progress=False)
        outputs.append(((out / "task2.json").read_text(), (out / "results.jsonl").read_text()))
    assert outputs[0] == outputs[1]
    task2 = json.loads(outputs[0][0])
    assert [e["index"] for e in task2] == [1, 2, 3, 4]
    records = {json.loads(x)["file"]: json.loads(x) for x in outputs[0][1].splitlines()}
    for entry in task2:
        expl = entry["explanation"]
        assert 1 <= len(expl) <= 5
        assert all(name in BY_NAME and reason.strip() for name, reason in expl.items())
        rec = records[f"{entry['index']}.png"]
        assert rec["artifacts"] == expl
        assert [(e["artifact"], e["reason"]) for e in rec["evidence"]] == list(expl.items())
        assert all(e["ratio"] >= 3.0 and isinstance(e["value"], float) for e in rec["evidence"])
    assert records["5.png"]["error"] == "empty file (0 bytes)"


def test_scan_reports_the_domain_score_and_shows_out_of_domain(tiny_checkpoint: Path, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        small = rng.uniform(40, 210, size=(4, 4, 3)).astype(np.uint8)
        Image.fromarray(small).resize((32, 32), Image.Resampling.NEAREST).save(d / f"{i + 1}.png")
    noise = rng.choice([0, 255], size=(32, 32, 3)).astype(np.uint8)
    Image.fromarray(noise).save(d / "4.png")
    out = tmp_path / "out"
    run_scan([d], out, checkpoint=tiny_checkpoint, device="cpu", progress=False)
    recs = {r["file"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert all(isinstance(r["domain_score"], float) for r in recs.values())
    assert recs["4.png"]["in_domain"] is False and recs["4.png"]["domain_score"] > 1.0
    assert sum(r["in_domain"] for r in recs.values()) >= 2
    page = (out / "report.html").read_text()
    assert "out of domain (score" in page and 'class="card ' in page

    # A checkpoint without a domain model gives no score and calls nothing out of domain.
    from tests.conftest import make_tiny_checkpoint

    plain = make_tiny_checkpoint(tmp_path / "plain", domain=False)
    run_scan([d], tmp_path / "plain-out", checkpoint=plain, device="cpu", progress=False)
    plain_recs = [json.loads(line) for line in (tmp_path / "plain-out" / "results.jsonl").read_text().splitlines()]
    assert all(r["domain_score"] is None and r["in_domain"] is None for r in plain_recs)
    assert "out of domain (score" not in (tmp_path / "plain-out" / "report.html").read_text()


def test_an_unexpected_decoder_error_fails_that_image_only(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A parser bug (here: an IndexError from inside the decoder) used to escape decode_item and
    # fail every image of its batch, or a worker's whole 128-image chunk.
    import fakescope.pipeline as pipeline

    real = pipeline.decode_image

    def flaky(data: bytes, max_pixels: int) -> Image.Image:
        if data.startswith(b"BOOM"):
            raise IndexError("plugin bug")
        return real(data, max_pixels=max_pixels)

    monkeypatch.setattr(pipeline, "decode_image", flaky)
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        Image.fromarray(synth_image("real", i)).save(d / f"{i + 1}.png")
    (d / "4.png").write_bytes(b"BOOM and more")
    run_scan([d], tmp_path / "out", checkpoint=tiny_checkpoint, device="cpu", progress=False)
    recs = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["error"] for r in recs] == [None, None, None, "cannot decode image: IndexError: plugin bug"]


def test_an_image_resampled_past_the_trained_range_is_out_of_domain(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # The checkpoint saw its input size only, with rescaling down to half: a 256x256 upload squeezed
    # into 32x32 is outside what was trained or measured, whatever its features look like.
    d = tmp_path / "in"
    d.mkdir()
    small = np.random.default_rng(3).uniform(40, 210, size=(4, 4, 3)).astype(np.uint8)
    for side in (32, 48, 256):
        Image.fromarray(small).resize((side, side), Image.Resampling.NEAREST).save(d / f"{side}.png")
    run_scan([d], tmp_path / "out", checkpoint=tiny_checkpoint, device="cpu", progress=False)
    recs = {r["file"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert recs["256.png"]["in_domain"] is False and recs["256.png"]["domain_score"] >= 256 / 32 / 2
    det = Detector.load(tiny_checkpoint, device="cpu")
    assert det.domain is not None and det.domain.max_resample == 2.0
    assert recs["48.png"]["domain_score"] >= 48 / 32 / 2


def test_a_file_that_declares_generation_is_fake_by_provenance_and_stripping_it_keeps_the_score(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from PIL import PngImagePlugin

    src = tmp_path / "in"
    src.mkdir()
    im = Image.fromarray(synth_image("real", 7).astype(np.uint8))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a dog, Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd-v1-5")
    im.save(src / "1.png", pnginfo=info)
    im.save(src / "2.png")  # the same pixels, the metadata stripped
    run_scan([src], tmp_path / "out", checkpoint=tiny_checkpoint, device="cpu", progress=False)
    declared, stripped = (json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines())
    assert declared["decided_by"] == "provenance" and declared["prediction"] == "fake"
    assert declared["provenance"]["declares_ai"] and declared["provenance"]["sources"] == ["png_text"]
    assert stripped["decided_by"] == "detector" and stripped["provenance"] is None
    assert stripped["prediction"] == ("fake" if stripped["fake_probability"] >= 0.5 else "real")
    # The detector's own answer is the pixels': the metadata moves the verdict, never the score.
    assert declared["fake_probability"] == stripped["fake_probability"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "declares it was generated (AUTOMATIC1111): png_text" in page
