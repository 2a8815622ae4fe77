from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pytest
from PIL import Image

from fakescope.imageio import ImageError, decode_image, iter_inputs, to_rgb_array

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


def _png(w: int = 8, h: int = 8, mode: str = "RGB", color: tuple[int, ...] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_errors_are_clear() -> None:
    with pytest.raises(ImageError, match="empty file"):
        decode_image(b"")
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"hello, world")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(_png(64, 64)[:80])
    with pytest.raises(ImageError, match="over the limit of 100"):
        decode_image(_png(20, 20), max_pixels=100)


def test_rgba_composited_on_white_and_resized() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (40, 20), (0, 0, 0, 0)).save(buf, format="PNG")
    arr = to_rgb_array(decode_image(buf.getvalue()), (32, 32))
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert arr.min() == 255


def test_iter_inputs_folders_and_archives(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(_png())
    (tmp_path / "sub" / "b.png").write_bytes(_png())
    (tmp_path / ".hidden.png").write_bytes(_png())
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        zf.writestr("x/1.png", _png())
        zf.writestr("../evil.png", _png())
    with tarfile.open(tmp_path / "d.tar.gz", "w:gz") as tf:
        data = _png()
        info = tarfile.TarInfo("t/2.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    items = list(iter_inputs([tmp_path]))
    names = [i.name for i in items]
    assert names == ["a.png", "c.zip/../evil.png", "c.zip/x/1.png", "d.tar.gz/t/2.png", "sub/b.png"]
    with pytest.raises(ImageError, match="unsafe path"):
        items[1].read()
    assert all(decode_image(i.read()).size == (8, 8) for i in items if i is not items[1])


def test_archive_member_limits(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", b"\0" * 200_000)
        zf.writestr("ok.png", _png())
    items = {i.name: i for i in iter_inputs([tmp_path / "bomb.zip"], max_bytes=100_000)}
    with pytest.raises(ImageError, match="over the limit"):
        items["bomb.zip/big.bin"].read()
    assert decode_image(items["bomb.zip/ok.png"].read()).size == (8, 8)
    (only,) = iter_inputs([tmp_path / "bomb.zip"], max_members=1)
    with pytest.raises(ImageError, match="archive has 2 members"):
        only.read()


def test_missing_path_and_fake_archive(tmp_path: Path) -> None:
    (tmp_path / "fake.zip").write_text("not a zip")
    missing, fake = iter_inputs([tmp_path / "nope", tmp_path / "fake.zip"])
    with pytest.raises(ImageError, match="no such file"):
        missing.read()
    with pytest.raises(ImageError, match="not a zip or tar"):
        fake.read()


def _tar_gz(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for i, name in enumerate(names):
            data = _png(color=(i % 256, 0, 0))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class _CountingFile(io.FileIO):
    read_bytes = 0

    def readinto(self, b: WriteableBuffer) -> int | None:
        n = super().readinto(b)
        _CountingFile.read_bytes += n or 0
        return n


def test_reversed_tar_is_read_once_in_archive_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Members in reverse name order used to be sorted, then sought backwards in the gzip stream,
    # which re-decompresses from the start each time: quadratic. Now the stream is read forwards
    # once, so the bytes read from disk stay about the archive's size however the members are ordered.
    names = [f"m/{i:04d}.png" for i in range(400)][::-1]
    path = _tar_gz(tmp_path / "rev.tar.gz", names)
    real_open = tarfile.open

    # The call iter_inputs makes: a stream read of the file at ``name``.
    def counting_open(name: Path, mode: Literal["r|*"], *, tarinfo: type[tarfile.TarInfo]) -> tarfile.TarFile:
        return real_open(fileobj=_CountingFile(name), mode=mode, tarinfo=tarinfo)

    monkeypatch.setattr(tarfile, "open", counting_open)
    _CountingFile.read_bytes = 0
    items = list(iter_inputs([path]))
    assert [i.name for i in items] == [f"rev.tar.gz/{n}" for n in names]
    assert _CountingFile.read_bytes < 3 * path.stat().st_size
    assert all(decode_image(i.read()).size == (8, 8) for i in items)


def test_tar_member_count_and_total_bytes_are_capped_as_read(tmp_path: Path) -> None:
    path = _tar_gz(tmp_path / "many.tar.gz", [f"{i}.png" for i in range(5)])
    items = list(iter_inputs([path], max_members=3))
    assert [i.name for i in items] == ["many.tar.gz/0.png", "many.tar.gz/1.png", "many.tar.gz/2.png", "many.tar.gz"]
    with pytest.raises(ImageError, match="more than 3 members"):
        items[-1].read()
    from fakescope.imageio import _iter_archive

    size = len(_png())
    capped = list(_iter_archive(path, "many.tar.gz", 10_000, 100, max_total_bytes=2 * size))
    assert len(capped) == 3
    with pytest.raises(ImageError, match="expands past the limit"):
        capped[-1].read()


def test_only_raster_formats_are_opened(tmp_path: Path) -> None:
    # EPS would be handed to Ghostscript; it is refused before any plugin parses it.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n"
    with pytest.raises(ImageError, match=r"not an image in a supported format \(JPEG"):
        decode_image(eps)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TGA")  # a real image, but not a format on the list
    with pytest.raises(ImageError, match="supported format"):
        decode_image(buf.getvalue())
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format=fmt)
        assert decode_image(buf.getvalue()).size == (8, 8)


def _heic(width: int = 80, height: int = 64, exif: bytes | None = None) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif else {}
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        buf, format="HEIF", quality=90, **kwargs
    )
    return buf.getvalue()


def test_heic_decodes_within_the_limits_and_a_corrupt_one_fails_clearly() -> None:
    from fakescope.imageio import sniff_media_type

    data = _heic()
    assert sniff_media_type(data) == "image/heic"
    im = decode_image(data)
    assert (im.format, im.size) == ("HEIF", (80, 64))
    with pytest.raises(ImageError, match="over the limit of 1000"):
        decode_image(data, max_pixels=1000)
    with pytest.raises(ImageError, match="corrupt or truncated image"):
        decode_image(data[: len(data) // 2])


def test_heic_is_scanned_and_its_exif_read_as_provenance(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from fakescope.provenance import read_provenance
    from fakescope.scan import run_scan

    exif = Image.Exif()
    exif[0x0131] = "Midjourney"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.heic").write_bytes(_heic(exif=exif.tobytes()))
    whole = _heic()
    (tmp_path / "in" / "broken.heic").write_bytes(whole[: len(whole) // 2])
    prov = read_provenance((tmp_path / "in" / "photo.heic").read_bytes())
    assert prov.details["format"] == "heic" and prov.generator == "Midjourney" and prov.declares_ai
    run_scan([tmp_path / "in"], tmp_path / "out", checkpoint=str(tiny_checkpoint), progress=False)

    rows = {r["file"].rsplit("/", 1)[-1]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").open())}
    assert rows["photo.heic"]["error"] is None and rows["photo.heic"]["width"] == 80
    assert rows["photo.heic"]["prediction"] == "fake" and rows["photo.heic"]["decided_by"] == "provenance"
    assert rows["broken.heic"]["error"].startswith("corrupt or truncated image")


def test_a_tar_long_name_header_is_not_read_into_memory(tmp_path: Path) -> None:
    # A GNU long-name header declaring a 512 MiB name: tarfile would read it whole before anything
    # else looked at it. The header is refused as it is met.
    header = tarfile.TarInfo("././@LongLink")
    header.type = tarfile.GNUTYPE_LONGNAME
    header.size = 512 * 1024 * 1024
    path = tmp_path / "longname.tar.gz"
    with gzip.open(path, "wb") as f:
        f.write(header.tobuf(format=tarfile.GNU_FORMAT))
        f.write(b"\0" * (4 * 1024 * 1024))  # some of the "name"; gzip makes it tiny
    (item,) = list(iter_inputs([path]))
    with pytest.raises(ImageError, match="long-name header of 536870912 bytes"):
        item.read()


def test_skipped_tar_members_count_toward_the_archive_budget(tmp_path: Path) -> None:
    # Oversized members are skipped, but reaching the next one means decompressing them: they count.
    path = tmp_path / "skips.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for i in range(4):
            info = tarfile.TarInfo(f"{i}.png")
            info.size = 2 * 1024 * 1024
            tf.addfile(info, io.BytesIO(b"\0" * info.size))
    from fakescope.imageio import _iter_archive

    items = list(_iter_archive(path, "skips.tar.gz", 1024 * 1024, 100, max_total_bytes=5 * 1024 * 1024))
    assert [i.name for i in items] == ["skips.tar.gz/0.png", "skips.tar.gz/1.png", "skips.tar.gz"]
    with pytest.raises(ImageError, match="expands past the limit"):
        items[-1].read()
    # And a well-compressed archive may not expand past a multiple of its own size, whatever the cap.
    from fakescope import imageio

    assert path.stat().st_size * imageio.MAX_EXPANSION_RATIO + imageio.EXPANSION_FLOOR_BYTES < 8 * 1024**3


def test_a_zip_declaring_too_many_members_is_refused_before_its_directory_is_parsed(tmp_path: Path) -> None:
    # Only an end-of-central-directory record declaring 60,000 entries: zipfile would parse (and hold)
    # a directory that large; the count is read from the record first.
    path = tmp_path / "many.zip"
    path.write_bytes(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 60_000, 60_000, 60_000 * 46, 0, 0))
    (item,) = list(iter_inputs([path], max_members=100))
    with pytest.raises(ImageError, match="archive has 60000 members, over the limit of 100"):
        item.read()


@pytest.mark.parametrize(
    ("fmt", "pillow_format"),
    [("png", "PNG"), ("jpeg", "JPEG"), ("gif", "GIF"), ("bmp", "BMP"), ("tiff", "TIFF"), ("webp", "WEBP")],
)
def test_one_sniffer_names_the_container_for_decoding_and_provenance(fmt: str, pillow_format: str) -> None:
    from fakescope.imageio import MEDIA_TYPES, sniff_format, sniff_media_type
    from fakescope.provenance import read_provenance

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (93, 0, 0)).save(buf, format=pillow_format)
    data = buf.getvalue()
    assert sniff_format(data) == fmt
    assert sniff_media_type(data) == MEDIA_TYPES[fmt]
    assert read_provenance(data).details["format"] == fmt


def test_jpeg_xl_is_recognised_but_not_served_as_a_decodable_image() -> None:
    from fakescope.imageio import sniff_format, sniff_media_type

    for data in (b"\xff\x0a" + bytes(30), b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(30)):
        assert sniff_format(data) == "jxl"
        assert sniff_media_type(data) == "application/octet-stream"
    assert sniff_format(b"not an image") is None
