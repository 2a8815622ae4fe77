"""Reading untrusted images: folders, archives, limits, and one clear error per bad file.

Every input is read as bytes first and decoded with explicit limits, so a zero-byte file, a text file,
a truncated JPEG, a decompression bomb or an archive member that is too large becomes an
:class:`ImageError` for that one input while the rest of a batch goes on.
"""

from __future__ import annotations

import io
import re
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pillow_heif import register_heif_opener

__all__ = [
    "ALLOWED_FORMATS",
    "ARCHIVE_SUFFIXES",
    "DECODED_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "MEDIA_TYPES",
    "ImageError",
    "InputItem",
    "decode_image",
    "iter_inputs",
    "sniff_format",
    "sniff_media_type",
    "to_rgb_array",
]

IMAGE_SUFFIXES = frozenset(
    {
        ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jfif", ".avif",
        ".heic", ".heif",
    }
)  # fmt: skip
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# 40 megapixels covers any camera a platform will see; a 20000x20000 bomb is 400.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_MEMBERS = 100_000
# What one archive may expand to in all: its members are read one at a time, but a scan or an API
# request should not spend hours inflating a few MB of well-compressed data.
DEFAULT_MAX_ARCHIVE_BYTES = 8 * 1024 * 1024 * 1024
# Images are already compressed: an archive of them expands by little. One that expands by more than
# this ratio (plus a floor for tiny archives) is a decompression bomb, whatever its members are.
MAX_EXPANSION_RATIO = 8
EXPANSION_FLOOR_BYTES = 64 * 1024 * 1024
# A tar header's long name or pax record is a file name, not data: tarfile reads it whole into memory.
MAX_TAR_HEADER_BYTES = 64 * 1024
# A zip's central directory entry is about 50 bytes plus the name: one much larger per member is no
# directory of images.
MAX_ZIP_DIRECTORY_BYTES_PER_MEMBER = 4096


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a GNU long-name or pax header's declared size into memory before anything else
    looks at it (a 0.5 MiB .tar.gz declaring a 512 MiB name grew the API by 1 GB): refuse large ones."""

    def _proc_gnulong(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > MAX_TAR_HEADER_BYTES:
            raise tarfile.HeaderError(f"long-name header of {self.size} bytes")
        return super()._proc_gnulong(tarfile_)  # type: ignore[misc]

    def _proc_pax(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > MAX_TAR_HEADER_BYTES:
            raise tarfile.HeaderError(f"pax header of {self.size} bytes")
        return super()._proc_pax(tarfile_)  # type: ignore[misc]


def _zip_directory(path: Path) -> tuple[int, int] | None:
    """``(members, central directory bytes)`` a zip's end records declare, read from its last 64 KiB
    before :class:`zipfile.ZipFile` parses (and holds) the whole directory; None when not found."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - 65_558))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        return None
    members, directory = struct.unpack("<HI", tail[at + 10 : at + 16])
    locator = tail.rfind(b"PK\x06\x07", 0, at)
    if (members == 0xFFFF or directory == 0xFFFFFFFF) and locator >= 0:
        (record,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
        with path.open("rb") as f:
            f.seek(record)
            zip64 = f.read(56)
        if zip64[:4] == b"PK\x06\x06" and len(zip64) >= 48:
            members, directory = struct.unpack("<QQ", zip64[32:48])
    return members, directory


_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

# Overlays are drawn on a copy of the image no larger than this: a 4000x3000 photo does not need a
# 4000x3000 heatmap PNG, and encoding one would cost more than classifying it.
OVERLAY_MAX_SIDE = 384


class ImageError(ValueError):
    """One input cannot be used; the message says why in words a user can act on."""


@dataclass(frozen=True)
class InputItem:
    """One input of a scan: a display name and a way to read its bytes (or the error reading them).

    ``size``: how many bytes ``read`` will return, where that is known before reading (an upload's
    length, an archive member's declared size); the API reserves memory for it from this.
    """

    name: str
    read: Callable[[], bytes]
    size: int | None = None


# The raster formats a platform's uploads come in, and the only ones Pillow may open: its other
# plugins include EPS (handed to Ghostscript, an interpreter) and dozens of rarely audited parsers.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF", "HEIF")
# HEIC/HEIF through pillow-heif's plugin (libheif), registered as Pillow's "HEIF" format (Pillow
# reads AVIF itself).
register_heif_opener()

# The ISO-BMFF major brands of HEIC/HEIF stills and sequences.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})

_BOMB_SIZE = re.compile(r"Image size \((\d+) pixels\)")


# Every container fakescope recognises from its first bytes, with its media type. JPEG XL is
# recognised (its provenance is read) but not decoded: Pillow has no reader for it.
MEDIA_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "webp": "image/webp",
    "avif": "image/avif",
    "heic": "image/heic",
    "jxl": "image/jxl",
}
DECODED_FORMATS = frozenset(MEDIA_TYPES) - {"jxl"}

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\xff\x0a", "jxl"),  # a bare JPEG XL codestream
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jxl"),  # JPEG XL in its ISO-BMFF container
)


def sniff_format(data: bytes) -> str | None:
    """The container of an image's bytes from their signature (a key of :data:`MEDIA_TYPES`), or None.

    The extension and the client's content type are never trusted for this.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "avif"
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return "heic"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def sniff_media_type(data: bytes) -> str:
    """The media type of an image's bytes in a format fakescope decodes (``application/octet-stream``
    for any other)."""
    fmt = sniff_format(data)
    return MEDIA_TYPES[fmt] if fmt is not None and fmt in DECODED_FORMATS else "application/octet-stream"


# Compressed text chunks (zTXt, iTXt) a PNG may carry: a real file has a handful. Pillow inflates up
# to 1 MiB of each and does not count one whose checksum fails, so thousands of small bombs with bad
# checksums cost tens of seconds of inflating while staying "valid".
MAX_PNG_COMPRESSED_TEXT_CHUNKS = 64
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _screen_png(data: bytes) -> None:
    """Walks a PNG's chunk headers (no chunk is read) and refuses one Pillow would spend long on."""
    pos, compressed = len(_PNG_SIGNATURE), 0
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind in (b"zTXt", b"iTXt"):
            compressed += 1
            if compressed > MAX_PNG_COMPRESSED_TEXT_CHUNKS:
                raise ImageError(
                    f"PNG carries more than {MAX_PNG_COMPRESSED_TEXT_CHUNKS} compressed text chunks, the limit"
                )
        if kind == b"IEND":
            return
        pos += 12 + length


# Markers (fill bytes included) before a JPEG's scan: a real file has a few dozen segments. Pillow
# walks them one by one in Python: a 48 MiB file of empty segments once took 27 s there.
MAX_JPEG_MARKERS = 4096


def _screen_jpeg(data: bytes) -> None:
    """Walks a JPEG's markers up to its scan and refuses one with more than MAX_JPEG_MARKERS."""
    pos = 2
    for _ in range(MAX_JPEG_MARKERS):
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return  # Pillow says what is wrong with it
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):
            return
        if marker == 0xFF or marker in (0x01, *range(0xD0, 0xD8)):
            pos += 1 if marker == 0xFF else 2
            continue
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    raise ImageError(f"JPEG has more than {MAX_JPEG_MARKERS} markers before its image data, the limit")


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, at_least: tuple[int, int] | None = None
) -> Image.Image:
    """Decodes ``data`` fully, refusing empty, non-image, truncated and oversized inputs.

    ``at_least``: ``(width, height)`` the caller needs no more than. A JPEG is then decoded at the
    smallest of its DCT scales (1/2, 1/4, 1/8) that still covers it, so a 40-megapixel photo is never
    held at full size for a 384-pixel thumbnail; other formats decode whole. The pixel limit applies
    to the size the file declares either way.

    Raises:
        ImageError: with a short reason.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    if data.startswith(_PNG_SIGNATURE):
        _screen_png(data)
    elif data.startswith(b"\xff\xd8"):
        _screen_jpeg(data)
    try:
        with warnings.catch_warnings():
            # Pillow warns, then raises, on bombs; we check the size ourselves before decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            if w == 0 or h == 0:
                raise ImageError(f"image has no pixels ({w}x{h})")
            if at_least is not None and im.format == "JPEG":
                im.draft(None, at_least)
            im.load()
    except UnidentifiedImageError:
        raise ImageError(f"not an image in a supported format ({', '.join(ALLOWED_FORMATS)})") from None
    except Image.DecompressionBombError as e:
        # Pillow refuses sizes past twice its own limit before we can read the header ourselves; say it in
        # the same words as our own check, with the size Pillow read when its message carries it.
        size = _BOMB_SIZE.search(str(e))
        if size is None:
            raise ImageError(f"image is over the limit of {max_pixels} pixels: {e}") from None
        raise ImageError(f"image is {size.group(1)} pixels, over the limit of {max_pixels}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"corrupt or truncated image: {e}") from None
    return im


def to_rgb_array(
    im: Image.Image, size: tuple[int, int] | None = None, interpolation: str = "bicubic", resize: str = "stretch"
) -> np.ndarray:
    """``im`` as ``(H, W, 3)`` uint8 RGB, resized to ``size`` (height, width) when it differs.

    ``resize="stretch"`` resizes to ``size`` whatever the aspect; ``"shorter_side"`` scales the shorter
    side to ``size``'s and takes the centre crop. Transparency is composited over white, so a logo with
    an alpha channel does not turn black.
    """
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    im = im.convert("RGB")
    if resize == "shorter_side" and size is not None and (im.height, im.width) != tuple(size):
        scale = max(size[0] / im.height, size[1] / im.width)
        w, h = max(size[1], round(im.width * scale)), max(size[0], round(im.height * scale))
        im = im.resize((w, h), _RESAMPLE[interpolation], reducing_gap=3.0)
        left, top = (w - size[1]) // 2, (h - size[0]) // 2
        im = im.crop((left, top, left + size[1], top + size[0]))
    elif resize != "stretch" and resize != "shorter_side":
        raise ValueError(f"unknown resize {resize!r}")
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), _RESAMPLE[interpolation], reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8)


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _parts(name: str) -> list[str]:
    # An archive member's path components, backslashes counted as separators too ("..\\x.png" is a
    # climb). What PurePosixPath(...).parts gives, less the root, with plain string splits: the API
    # checks every member of a 10,000-image archive twice, and pathlib was a tenth of an upload's CPU.
    return [p for p in name.replace("\\", "/").split("/") if p and p != "."]


def _skip(name: str) -> bool:
    return any((p.startswith(".") and p != "..") or p == "__MACOSX" for p in _parts(name))


def _unsafe(name: str) -> bool:
    # Nothing is extracted to disk, but a member that climbs out of the archive is a sign of an
    # attack and its name would mislead whoever reads the results: report it instead of reading it.
    return name.replace("\\", "/").startswith("/") or ".." in _parts(name)


def _read_file(path: Path, max_bytes: int) -> Callable[[], bytes]:
    def read() -> bytes:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"file is {size} bytes, over the limit of {max_bytes}")
        return path.read_bytes()

    return read


def _fail(message: str) -> Callable[[], bytes]:
    def read() -> bytes:
        raise ImageError(message)

    return read


def _iter_archive(
    path: Path, label: str, max_bytes: int, max_members: int, max_total_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
) -> Iterator[InputItem]:
    """Members of a zip or tar archive, read into memory one at a time with a size cap each and one
    for the whole archive. Zip members come in name order (the central directory allows it); tar
    members in archive order."""
    # Decompressed bytes (every member's, read or skipped) this archive may cost in all.
    budget = min(max_total_bytes, EXPANSION_FLOOR_BYTES + MAX_EXPANSION_RATIO * path.stat().st_size)
    try:
        if zipfile.is_zipfile(path):
            declared_dir = _zip_directory(path)
            if declared_dir is not None:
                members, directory = declared_dir
                if members > max_members:
                    yield InputItem(label, _fail(f"archive has {members} members, over the limit of {max_members}"))
                    return
                if directory > MAX_ZIP_DIRECTORY_BYTES_PER_MEMBER * max(members, 1):
                    yield InputItem(label, _fail("corrupt archive: its directory is too large for its members"))
                    return
            zf = zipfile.ZipFile(path)
            infos = sorted(
                (i for i in zf.infolist() if not i.is_dir() and not _skip(i.filename)), key=lambda i: i.filename
            )
            if len(infos) > max_members:
                yield InputItem(label, _fail(f"archive has {len(infos)} members, over the limit of {max_members}"))
                return
            declared = sum(i.file_size for i in infos if i.file_size <= max_bytes)
            if declared > budget:
                yield InputItem(label, _fail(f"archive expands past the limit of {budget} bytes in all"))
                return
            for info in infos:
                if _unsafe(info.filename):
                    yield InputItem(f"{label}/{info.filename}", _fail("unsafe path in archive (absolute or '..')"))
                    continue

                def read_zip(info: zipfile.ZipInfo = info) -> bytes:
                    if info.file_size > max_bytes:
                        raise ImageError(f"archive member is {info.file_size} bytes, over the limit of {max_bytes}")
                    try:
                        with zf.open(info) as f:
                            # The declared size can lie: never read more than the cap.
                            data = f.read(max_bytes + 1)
                    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
                        # A bad CRC, corrupt deflate data, an unsupported method or an encrypted member:
                        # this member is unusable, the rest of the archive may be fine.
                        raise ImageError(f"corrupt archive member: {e}") from None
                    if len(data) > max_bytes:
                        raise ImageError(f"archive member expands past the limit of {max_bytes} bytes")
                    return data

                yield InputItem(f"{label}/{info.filename}", read_zip, size=info.file_size)
        else:
            # Not tarfile.is_tarfile: it reads the first header with the stock TarInfo, which reads a
            # long-name header's declared size into memory. Opening the stream reads it with ours.
            try:
                tar = tarfile.open(path, "r|*", tarinfo=_BoundedTarInfo)  # noqa: SIM115 - closed by the with below
            except tarfile.ReadError:
                yield InputItem(label, _fail("not a zip or tar archive, though named like one"))
                return
            # Streamed in archive order: a compressed tar can only be read forwards, and seeking back
            # to a member behind the current one re-decompresses from the start (sorting the members
            # by name made a reversed archive quadratic). Members are counted as they come, and the
            # bytes read are capped for the whole archive, so neither a member list nor a stream of
            # small members can hold the reader for long.
            with tar:
                count, total = 0, 0
                for m in tar:
                    # Every member is decompressed to move past it, read or skipped: each counts.
                    total += max(m.size, 0)
                    if total > budget:
                        yield InputItem(label, _fail(f"archive expands past the limit of {budget} bytes in all"))
                        return
                    if not m.isfile() or _skip(m.name):
                        continue
                    count += 1
                    if count > max_members:
                        yield InputItem(label, _fail(f"archive has more than {max_members} members, the limit"))
                        return
                    name = f"{label}/{m.name}"
                    if _unsafe(m.name):
                        yield InputItem(name, _fail("unsafe path in archive (absolute or '..')"))
                        continue
                    if m.size > max_bytes:
                        yield InputItem(name, _fail(f"archive member is {m.size} bytes, over the limit"))
                        continue
                    f = tar.extractfile(m)
                    data = f.read() if f is not None else b""

                    def read_tar(data: bytes = data) -> bytes:
                        return data

                    yield InputItem(name, read_tar, size=len(data))

    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as e:
        yield InputItem(label, _fail(f"corrupt archive: {e}"))


def iter_inputs(
    paths: Sequence[str | Path],
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Iterator[InputItem]:
    """Every input under ``paths``: files, folders (recursively, sorted) and zip/tar members.

    Hidden files are skipped; every other file is an input, so a stray text file in a folder is
    reported as "not an image" instead of silently dropped.
    """
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).as_posix()
                if not f.is_file() or _skip(rel):
                    continue
                name = f"{p.name}/{rel}" if len(paths) > 1 else rel
                if _is_archive(f.name):
                    yield from _iter_archive(f, name, max_bytes, max_members)
                else:
                    yield InputItem(name, _read_file(f, max_bytes))
        elif p.is_file() and _is_archive(p.name):
            yield from _iter_archive(p, p.name, max_bytes, max_members)
        elif p.is_file():
            yield InputItem(p.name, _read_file(p, max_bytes))
        else:
            yield InputItem(str(p), _fail("no such file or folder"))
