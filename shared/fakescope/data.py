"""Labelled image sets in the CIFAKE layout, decoded once into arrays, and a reproducible split.

A source is a folder or a ``.tar``/``.tar.gz``/``.zip`` archive holding ``REAL/`` and ``FAKE/``
(any case, at any depth: the label is the nearest such folder above the file). Sources are decoded
to ``uint8`` arrays at the model's input size and cached on disk keyed by the source's path, size and
modification time, so later epochs and later runs skip JPEG decoding entirely.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm import tqdm

from fakescope.imageio import IMAGE_SUFFIXES, to_rgb_array

__all__ = [
    "LABELS",
    "LabelledArray",
    "Split",
    "export_split",
    "iter_labelled",
    "label_of",
    "load_labelled",
    "make_split",
]

logger = logging.getLogger(__name__)

# Label order of every checkpoint this project trains; saved with it and read back from it.
LABELS: tuple[str, str] = ("real", "fake")


def label_of(path: str) -> int | None:
    """The label index of a member path from its nearest ``REAL``/``FAKE`` folder, else ``None``."""
    for part in reversed(PurePosixPath(path).parts[:-1]):
        low = part.lower()
        if low in LABELS:
            return LABELS.index(low)
    return None


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def iter_labelled(source: str | Path) -> Iterator[tuple[str, int, bytes]]:
    """Yields ``(member name, label index, encoded bytes)`` for every labelled image in ``source``.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: ``source`` is a file that is not a tar or zip archive.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"no such data source: {source}")
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_file() and _is_image_name(rel) and (label := label_of(rel)) is not None:
                yield rel, label, path.read_bytes()
    elif tarfile.is_tarfile(source):
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                if member.isfile() and _is_image_name(member.name) and (label := label_of(member.name)) is not None:
                    f = tar.extractfile(member)
                    if f is not None:
                        yield member.name, label, f.read()
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                name = info.filename
                if not info.is_dir() and _is_image_name(name) and (label := label_of(name)) is not None:
                    yield name, label, zf.read(info)
    else:
        raise ValueError(f"{source} is neither a folder nor a tar or zip archive")


@dataclass
class LabelledArray:
    """Decoded images of one or more sources: ``images`` is ``(N, H, W, 3)`` uint8."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> LabelledArray:
        return LabelledArray(self.images[idx], self.labels[idx], [self.names[i] for i in idx])


def _cache_path(source: Path, size: tuple[int, int], cache_dir: Path, jpeg_quality: int = 0) -> Path:
    st = source.stat()
    key = f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{size}|v1"
    if jpeg_quality:
        key += f"|jpeg{jpeg_quality}"
    if source.is_dir():
        # A folder's mtime does not change when a file in a sub-folder does: count the files too.
        key += f"|{sum(1 for _ in source.rglob('*'))}"
    return cache_dir / f"{source.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def as_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` after one baseline JPEG round trip at ``quality`` with 4:2:0 chroma (Pillow's and
    libjpeg's defaults, and CIFAKE's: every CIFAKE file carries the IJG quality-75 tables)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality, subsampling="4:2:0")
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _decode_source(source: Path, size: tuple[int, int], jpeg_quality: int = 0) -> LabelledArray:
    images, labels, names = [], [], []
    for name, label, data in tqdm(iter_labelled(source), desc=f"decode {source.name}", unit="img", leave=False):
        with Image.open(io.BytesIO(data)) as im:
            image = to_rgb_array(im, size)
            if jpeg_quality and im.format != "JPEG":
                image = as_jpeg(image, jpeg_quality)
            images.append(image)
        labels.append(label)
        names.append(f"{source.name}/{name}")
    if not images:
        raise ValueError(f"{source} holds no images under REAL/ or FAKE/ folders")
    return LabelledArray(np.stack(images), np.asarray(labels, dtype=np.int64), names)


def default_cache_dir() -> Path:
    return Path(os.environ.get("FAKESCOPE_CACHE_DIR", Path.home() / ".cache" / "fakescope"))


def load_labelled(
    sources: Sequence[str | Path],
    size: tuple[int, int] = (32, 32),
    cache_dir: Path | None = None,
    *,
    jpeg_quality: int = 0,
) -> LabelledArray:
    """Decodes ``sources`` at ``size`` (cached) and concatenates them in the order given.

    ``jpeg_quality``: every image whose file is not a JPEG gets one JPEG round trip at this quality
    (after resizing), so that when some sources were JPEG-compressed and others were not, for both
    labels alike, compression history is not a label (0: images as decoded).
    """
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for src in sources:
        src = Path(src)
        cache = _cache_path(src, size, cache_dir, jpeg_quality)
        if cache.exists():
            with np.load(cache) as z:
                parts.append(LabelledArray(z["images"], z["labels"], z["names"].tolist()))
            logger.info("loaded %d images of %s from cache %s", len(parts[-1]), src, cache)
        else:
            part = _decode_source(src, size, jpeg_quality)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, images=part.images, labels=part.labels, names=np.asarray(part.names))
            tmp.replace(cache)
            parts.append(part)
    return LabelledArray(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.labels for p in parts]),
        [n for p in parts for n in p.names],
    )


@dataclass(frozen=True)
class Split:
    """Index arrays into a :class:`LabelledArray`; disjoint, each stratified by label."""

    train: np.ndarray
    val: np.ndarray
    calib: np.ndarray

    def fingerprint(self, names: Sequence[str]) -> str:
        """A hash of the validation members, so a later run can prove it held out the same images."""
        return hashlib.sha256("\n".join(sorted(names[i] for i in self.val)).encode()).hexdigest()[:16]


def make_split(names: Sequence[str], labels: np.ndarray, val_size: int, calib_size: int, seed: int) -> Split:
    """A seeded split, stratified by label and independent of the order the sources were read in.

    Members are ordered by name before shuffling, so the same files always land on the same side.
    ``val_size`` images are held out for validation and ``calib_size`` for fitting the probability
    calibration; neither is ever trained on.
    """
    if val_size + calib_size >= len(names):
        raise ValueError(f"val_size + calib_size ({val_size + calib_size}) must be below the {len(names)} images")
    rng = np.random.default_rng(seed)
    order = np.asarray(sorted(range(len(names)), key=lambda i: names[i]))
    train, val, calib = [], [], []
    for label in np.unique(labels):
        members = order[labels[order] == label]
        members = members[rng.permutation(len(members))]
        share = len(members) / len(names)
        n_val, n_calib = round(val_size * share), round(calib_size * share)
        val.append(members[:n_val])
        calib.append(members[n_val : n_val + n_calib])
        train.append(members[n_val + n_calib :])
    return Split(*(np.sort(np.concatenate(parts)) for parts in (train, val, calib)))


def export_split(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    split: str = "val",
    val_size: int = 10_000,
    calib_size: int = 2_000,
    seed: int = 0,
    size: tuple[int, int] = (32, 32),
) -> int:
    """Writes the original files of one part of :func:`make_split` under ``out/REAL`` and ``out/FAKE``.

    The bytes are copied as they are (no re-encoding), named ``<source>__<member>`` flattened, so a
    later ``fakescope scan`` or ``evaluate`` sees exactly the images the split held out.
    """
    data = load_labelled(sources, size=size)
    spl = make_split(data.names, data.labels, val_size, calib_size, seed)
    wanted = {data.names[i] for i in getattr(spl, split)}
    out = Path(out)
    for label in LABELS:
        (out / label.upper()).mkdir(parents=True, exist_ok=True)
    n = 0
    for src in sources:
        src = Path(src)
        for name, label_idx, blob in iter_labelled(src):
            key = f"{src.name}/{name}"
            if key in wanted:
                flat = key.replace("/", "__")
                (out / LABELS[label_idx].upper() / flat).write_bytes(blob)
                n += 1
    return n
