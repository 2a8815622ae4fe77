"""multigen/small split for training and measuring a 32x32 model on its generators.

    python -m ops.split_tiles --out runs/tiles     # runs/tiles/train and runs/tiles/heldout
    fakescope export-split --split val --out runs/val
    python -m ops.split_tiles --out runs/tiles --resampled-reals 1000 --eval-reals runs/val/REAL   # and runs/tiles/eval

Tiles that share a latent (the manifest's ``latent``: one noise vector through several checkpoints
of a generator) are near copies of one another, so the split is by group, never by file: a group is
a generator and its latent, or the generator and the file when there is no latent. Each group goes
to ``heldout`` when a hash of it falls in the held-out share, so the split does not depend on the
order files are listed in and a file never changes side when others are added.

Both parts are trees of symbolic links in the ``REAL/<folder>/`` and ``FAKE/<folder>/`` layout every
fakescope command reads, so nothing is copied out of ``../shared/data``.

``--resampled-reals N`` adds, under ``train/REAL/cifake-resampled/``, N CIFAKE reals from the
training part of the default split (never validation or calibration) put through what the
``dcgan64-*`` tiles went through: bilinear up to 64 pixels, then a 2x box filter back to 32. Most of
those tiles are fakes, so without an equal share of reals with the same history a model could learn
"box-filtered" as "fake" (multigen's README asks for this).

``--jpeg Q`` writes every tile (and every resampled real) as a JPEG at quality Q with 4:2:0 chroma
instead of linking the PNG: CIFAKE's files, both labels, are quality-75 JPEGs, so tiles that were
never compressed are told from CIFAKE's reals by that alone (``python -m ops.compression_history``).
With ``--jpeg 75`` a candidate trained on ``train/`` and scored on ``eval/`` measures generators, not
compression history.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from fakescope.cli import DEFAULT_DATA
from fakescope.data import load_labelled, make_split
from fakescope.train import TrainConfig, resampled_copies

DATA = Path("../shared/data")
MANIFEST = DATA / "multigen" / "manifest.csv"


def group_of(row: dict[str, str]) -> str:
    """The unit a split keeps together: a generator's latent, or one file."""
    return f"{row['generator']}|{row['latent'] or row['file']}"


def is_held_out(group: str, share: float, salt: str) -> bool:
    digest = hashlib.sha256(f"{salt}|{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split_rows(
    rows: list[dict[str, str]], share: float, salt: str
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(train, held_out)``: every row of a group on the same side."""
    held = [r for r in rows if is_held_out(group_of(r), share, salt)]
    held_files = {r["file"] for r in held}
    return [r for r in rows if r["file"] not in held_files], held


def link_tree(rows: list[dict[str, str]], root: Path, out: Path, jpeg: int = 0) -> None:
    """Links each row's file under ``out``; with ``jpeg``, writes it as a JPEG of that quality instead."""
    for row in rows:
        # The manifest's file is "small/<LABEL>/<folder>/<name>": keep the label and folder.
        dest = out.joinpath(*row["file"].split("/")[1:])
        dest.parent.mkdir(parents=True, exist_ok=True)
        if jpeg:
            with Image.open(root / row["file"]) as im:
                im.convert("RGB").save(dest.with_suffix(".jpg"), "JPEG", quality=jpeg, subsampling="4:2:0")
        else:
            dest.symlink_to((root / row["file"]).resolve())


def training_reals() -> tuple[list[str], np.ndarray]:
    """The names and ``(N, 32, 32, 3)`` images of the real photos in the default split's training part
    (never its validation or calibration images)."""
    cfg = TrainConfig(data=DEFAULT_DATA, out="")  # the default split's sizes and seed
    data = load_labelled(cfg.data, size=(cfg.input_size, cfg.input_size))
    split = make_split(data.names, data.labels, cfg.val_size, cfg.calib_size, cfg.seed)
    reals = split.train[data.labels[split.train] == 0]
    return [data.names[i] for i in reals], data.images[reals]


def write_resampled_reals(n: int, out: Path, seed: int, jpeg: int = 0) -> int:
    """N reals of the default training split, up to 64 bilinear and down by a 2x box, as PNGs (as
    JPEGs of quality ``jpeg``, when given)."""
    names, images = training_reals()
    chosen = np.sort(np.random.default_rng(seed).choice(len(names), size=min(n, len(names)), replace=False))
    out.mkdir(parents=True, exist_ok=True)
    for i, pixels in zip(chosen, resampled_copies(images[chosen]), strict=True):
        im = Image.fromarray(pixels)
        stem = names[i].replace("/", "__").rsplit(".", 1)[0]
        if jpeg:
            im.save(out / f"{stem}.jpg", "JPEG", quality=jpeg, subsampling="4:2:0")
        else:
            im.save(out / f"{stem}.png")
    return len(chosen)


def link_eval_set(held: list[dict[str, str]], root: Path, reals: Path, n: int, out: Path, jpeg: int = 0) -> int:
    """The held-out tiles (as JPEGs of quality ``jpeg``, when given) plus the first ``n`` files (by
    name) of ``reals``, under ``REAL/<its name>``: the tiles' own reals are too few to score fakes
    against."""
    link_tree(held, root, out, jpeg)
    dest = out / "REAL" / reals.name
    dest.mkdir(parents=True, exist_ok=True)
    chosen = sorted(p for p in reals.iterdir() if p.is_file())[:n]
    for path in chosen:
        (dest / path.name).symlink_to(path.resolve())
    return len(chosen)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument("--held-out", type=float, default=0.2, help="share of groups held out")
    ap.add_argument("--salt", default="multigen-small-v1", help="changes which groups are held out")
    ap.add_argument("--resampled-reals", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--jpeg", type=int, default=0, metavar="Q", help="write tiles as JPEGs of quality Q (CIFAKE's: 75), not links"
    )
    ap.add_argument("--eval-reals", type=Path, help="a folder of real images (e.g. export-split --split val's REAL/)")
    ap.add_argument("--eval-reals-n", type=int, default=1000, help="how many of them join the held-out tiles in eval/")
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: remove it first, so that no stale link stays in a split")
    with args.manifest.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["track"] == "small"]
    train, held = split_rows(rows, args.held_out, args.salt)
    root = args.manifest.parent
    link_tree(train, root, args.out / "train", args.jpeg)
    link_tree(held, root, args.out / "heldout", args.jpeg)
    for name, part in (("train", train), ("heldout", held)):
        labels = Counter(r["label"] for r in part)
        groups = len({group_of(r) for r in part})
        print(f"{name}: {len(part):,} tiles ({labels['fake']:,} fake, {labels['real']:,} real) in {groups:,} groups")
    if args.resampled_reals:
        n = write_resampled_reals(
            args.resampled_reals, args.out / "train" / "REAL" / "cifake-resampled", args.seed, args.jpeg
        )
        print(f"train: {n:,} CIFAKE training-split reals, bilinear to 64 and box to 32, in REAL/cifake-resampled")
    if args.eval_reals:
        n = link_eval_set(held, root, args.eval_reals, args.eval_reals_n, args.out / "eval", args.jpeg)
        print(f"eval: the held-out tiles and {n:,} reals of {args.eval_reals}")


if __name__ == "__main__":
    main()
