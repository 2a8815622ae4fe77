"""ops/split_tiles.py: tiles that share a latent stay on one side, and the trees read as labelled sets."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from fakescope.data import as_jpeg, load_labelled
from ops.score_scan import generator_from_folder
from ops.split_tiles import main, split_rows

FIELDS = ["file", "label", "track", "generator", "family", "latent"]


def _row(file: str, generator: str, latent: str = "", track: str = "small") -> dict[str, str]:
    label = "fake" if "/FAKE/" in file else "real"
    return {"file": file, "label": label, "track": track, "generator": generator, "family": "gan", "latent": latent}


def _rows() -> list[dict[str, str]]:
    rows = []
    for latent in range(40):
        for ckpt in range(3):  # one latent through three checkpoints: near copies of one image
            rows.append(_row(f"small/FAKE/g/l{latent}_c{ckpt}.png", "g", latent=f"g:{latent}"))
    rows += [_row(f"small/FAKE/h/{i}.png", "h") for i in range(60)]
    rows += [_row(f"small/REAL/r/{i}.png", "real") for i in range(30)]
    return rows


def test_a_latent_is_never_on_both_sides() -> None:
    train, held = split_rows(_rows(), 0.25, "salt")
    assert {r["latent"] for r in train if r["latent"]}.isdisjoint({r["latent"] for r in held if r["latent"]})
    assert len(train) + len(held) == len(_rows())
    assert 0.1 < len(held) / len(_rows()) < 0.4
    # The side depends on the group alone, not on which other files are listed.
    again_train, again_held = split_rows(_rows()[::-1][:150], 0.25, "salt")
    held_files = {r["file"] for r in held}
    assert all(r["file"] in held_files for r in again_held)
    assert not any(r["file"] in held_files for r in again_train)


def test_the_trees_are_labelled_sets(tmp_path: Path) -> None:
    root = tmp_path / "multigen"
    rows = [*_rows(), _row("full/FAKE/x/big.jpg", "x", track="full")]
    for i, r in enumerate(rows):
        path = root / r["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (i % 256, 0, 0)).save(path)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    reals = tmp_path / "val" / "REAL"
    reals.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (32, 32), (0, i, 0)).save(reals / f"{i}.png")
    out = tmp_path / "tiles"
    main(
        [
            "--out",
            str(out),
            "--manifest",
            str(manifest),
            "--held-out",
            "0.25",
            "--eval-reals",
            str(reals),
            "--eval-reals-n",
            "3",
        ]
    )
    train = load_labelled([out / "train"], cache_dir=tmp_path / "cache")
    held = load_labelled([out / "heldout"], cache_dir=tmp_path / "cache")
    assert len(train) + len(held) == len(rows) - 1  # the full-size image is not a tile
    assert {n.split("/")[2] for n in held.names} <= {"g", "h", "r"}
    scored = load_labelled([out / "eval"], cache_dir=tmp_path / "cache")
    assert sorted(scored.names) == sorted(
        [n.replace("heldout/", "eval/") for n in held.names] + [f"eval/REAL/REAL/{i}.png" for i in range(3)]
    )
    assert generator_from_folder(f"{out}/heldout/FAKE/g/l0_c0.png") == "g"
    assert generator_from_folder(f"{out}/heldout/REAL/r/0.png") is None


def test_jpeg_writes_the_tiles_with_cifakes_compression(tmp_path: Path) -> None:
    # CIFAKE's files are quality-75 JPEGs: with --jpeg 75 every tile is written as one, not linked.
    root = tmp_path / "multigen"
    rows = _rows()
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for r in rows:
        path = root / r["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise).save(path)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "tiles"
    main(["--out", str(out), "--manifest", str(manifest), "--held-out", "0.25", "--jpeg", "75"])
    files = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    assert len(files) == len(rows) and all(p.suffix == ".jpg" and not p.is_symlink() for p in files)
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and np.asarray(im.convert("RGB")).tolist() == as_jpeg(noise, 75).tolist()
