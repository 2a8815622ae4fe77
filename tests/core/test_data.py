from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakescope.data import as_jpeg, export_split, iter_labelled, label_of, load_labelled, make_split


def test_label_of() -> None:
    assert label_of("REAL/1.jpg") == 0
    assert label_of("x/FAKE/sub/1.jpg") == 1
    assert label_of("fake/real/1.jpg") == 0  # the nearest folder wins
    assert label_of("other/1.jpg") is None


def test_folder_and_archive_sources(synth_cifake: Path, synth_tar: Path) -> None:
    folder = list(iter_labelled(synth_cifake))
    assert len(folder) == 80 and {lab for _, lab, _ in folder} == {0, 1}
    data = load_labelled([synth_cifake, synth_tar])
    assert data.images.shape == (100, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.names[0].startswith("cifake/") and data.names[-1].startswith("more.tar.gz/")
    again = load_labelled([synth_cifake, synth_tar])  # from the cache this time
    np.testing.assert_array_equal(again.images, data.images)
    assert again.names == data.names


def test_split_is_stratified_disjoint_and_order_free() -> None:
    names = [f"n{i:03d}" for i in range(100)]
    labels = np.array([0] * 60 + [1] * 40)
    s = make_split(names, labels, val_size=20, calib_size=10, seed=3)
    sets = [set(s.train), set(s.val), set(s.calib)]
    assert sum(map(len, sets)) == 100 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert labels[s.val].sum() == 8  # 40% fake, like the whole set
    # Reading the sources in another order must hold out the same files.
    perm = np.random.default_rng(0).permutation(100)
    s2 = make_split([names[i] for i in perm], labels[perm], val_size=20, calib_size=10, seed=3)
    assert {names[perm[i]] for i in s2.val} == {names[i] for i in s.val}
    assert s2.fingerprint([names[i] for i in perm]) == s.fingerprint(names)
    assert make_split(names, labels, 20, 10, seed=4).fingerprint(names) != s.fingerprint(names)


def test_split_too_large() -> None:
    with pytest.raises(ValueError, match="must be below"):
        make_split(["a", "b"], np.array([0, 1]), val_size=1, calib_size=1, seed=0)


def test_export_split_writes_original_bytes(synth_cifake: Path, tmp_path: Path) -> None:
    n = export_split([synth_cifake], tmp_path / "val", split="val", val_size=10, calib_size=4, seed=0)
    files = sorted((tmp_path / "val").rglob("*.png"))
    assert n == len(files) == 10
    assert {f.parent.name for f in files} == {"REAL", "FAKE"}
    original = synth_cifake / files[0].parent.name / files[0].name.split("__")[-1]
    assert files[0].read_bytes() == original.read_bytes()


def test_jpeg_quality_gives_only_files_that_are_not_jpegs_one_round_trip(tmp_path: Path) -> None:
    # Two identical noisy images, one stored as PNG and one as a quality-75 JPEG: asked to match
    # compression history, the PNG gets the JPEG's round trip and the JPEG is left as decoded.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for label in ("REAL", "FAKE"):
        (tmp_path / "src" / label).mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "src" / "FAKE" / "a.png")
    Image.fromarray(pixels).save(tmp_path / "src" / "REAL" / "a.jpg", quality=75)
    cache = tmp_path / "cache"
    plain = load_labelled([tmp_path / "src"], cache_dir=cache)
    matched = load_labelled([tmp_path / "src"], cache_dir=cache, jpeg_quality=75)
    png, jpg = (plain.names.index(f"src/{n}") for n in ("FAKE/a.png", "REAL/a.jpg"))
    np.testing.assert_array_equal(plain.images[png], pixels)  # the cache keeps the two apart
    np.testing.assert_array_equal(matched.images[jpg], plain.images[jpg])
    np.testing.assert_array_equal(matched.images[png], as_jpeg(pixels, 75))
    # The same encoder and settings as the stored JPEG: the PNG's pixels now match it exactly.
    np.testing.assert_array_equal(matched.images[png], plain.images[jpg])
    assert len(list(cache.glob("*.npz"))) == 2
