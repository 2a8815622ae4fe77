"""Does compression history mark multigen/small's tiles against CIFAKE's images? Measured, no training.

    python -m ops.compression_history

CIFAKE's files (both labels) are baseline JPEGs with the IJG quality-75 tables and 4:2:0 chroma;
multigen/small's tiles are lossless PNGs. Two tables, each with the tiles as stored and after one
quality-75 JPEG round trip (``fakescope.data.as_jpeg``, what the 32x32 protocol now gives them):

1. A one-number statistic per image, the log mean absolute Laplacian of its chroma (the image minus
   its grey level: JPEG's 4:2:0 halves the chroma resolution and the quantiser drops its fine
   detail). A Gaussian fitted on CIFAKE reals of the default split's training part; each set's
   ROC-AUC against other training-part CIFAKE reals, scored by squared distance from the mean (a
   deviation either way). Near 0.5 when compression is matched; far from it, compression history
   alone tells the sets apart.
2. The shipped ``small`` route (trained on CIFAKE alone) on the same tiles: its mean probability of
   fake and its ROC-AUC against the calibration split's CIFAKE reals, as the tiles are and after the
   round trip: how much of what it answers for a 32x32 image depends on whether the image was ever
   JPEG-compressed. The validation split is not read.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fakescope.cli import DEFAULT_DATA
from fakescope.data import as_jpeg
from fakescope.detector import DEFAULT_CHECKPOINT, Detector
from fakescope.evaluate import load_eval_data
from fakescope.metrics import roc_auc

MULTIGEN = Path("../shared/data/multigen")


def chroma_detail(images: np.ndarray) -> np.ndarray:
    """Log mean absolute 4-neighbour Laplacian of each ``(N, H, W, 3)`` image's chroma."""
    x = images.astype(np.float64)
    c = x - x.mean(-1, keepdims=True)
    lap = 4 * c[:, 1:-1, 1:-1] - c[:, :-2, 1:-1] - c[:, 2:, 1:-1] - c[:, 1:-1, :-2] - c[:, 1:-1, 2:]
    return np.log(np.abs(lap).reshape(len(x), -1).mean(1) + 1e-3)


def auc(neg: np.ndarray, pos: np.ndarray) -> float:
    return roc_auc(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos])


def tiles_by_family(manifest: Path) -> dict[str, np.ndarray]:
    """multigen/small's tiles as stored, by family (``real``: the DCGAN-64 training batches)."""
    files: dict[str, list[str]] = {}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            if row["track"] == "small":
                files.setdefault(row["family"], []).append(row["file"])
    root = manifest.parent
    return {
        fam: np.stack([np.asarray(Image.open(root / p).convert("RGB"), dtype=np.uint8) for p in paths])
        for fam, paths in sorted(files.items())
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(Path(DEFAULT_CHECKPOINT) / "small"), help="a 32x32 checkpoint")
    p.add_argument("--quality", type=int, default=75, help="the JPEG round trip's quality (CIFAKE's: 75)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    det = Detector.load(args.checkpoint, device="cpu")
    train = load_eval_data(DEFAULT_DATA, det, split="train")
    calib = load_eval_data(DEFAULT_DATA, det, split="calib")
    reals = train.images[train.labels == 0]
    pick = np.random.default_rng(0).permutation(len(reals))
    fit, other = reals[pick[:6000]], reals[pick[6000:10000]]
    sets = tiles_by_family(MULTIGEN / "manifest.csv")
    sets["CIFAKE fakes (SD 1.4, JPEG)"] = train.images[train.labels == 1][:4000]

    s_fit = chroma_detail(fit)
    mu, sd = s_fit.mean(), s_fit.std()
    z_other = ((chroma_detail(other) - mu) / sd) ** 2
    print("1. chroma detail, squared z against CIFAKE reals: ROC-AUC of each set against 4,000 other CIFAKE reals")
    print(f"{'set':30s} {'n':>6s} {'as stored':>10s} {'JPEG q' + str(args.quality):>10s}")
    for name, images in sets.items():
        stored = ((chroma_detail(images) - mu) / sd) ** 2
        after = f"{'-':>10s}"  # CIFAKE's own files are JPEGs already
        if not name.startswith("CIFAKE"):
            jpeg = ((chroma_detail(np.stack([as_jpeg(im, args.quality) for im in images])) - mu) / sd) ** 2
            after = f"{auc(z_other, jpeg):10.3f}"
        print(f"{name:30s} {len(images):6d} {auc(z_other, stored):10.3f} {after}")

    p_real = det.predict(calib.images[calib.labels == 0])
    print(f"\n2. {args.checkpoint}: p(fake) of the tiles, ROC-AUC against {len(p_real)} calibration-split CIFAKE reals")
    print(f"{'family':30s} {'n':>6s} {'mean p stored':>14s} {'mean p JPEG':>12s} {'AUC stored':>11s} {'AUC JPEG':>9s}")
    for name, images in sets.items():
        if name.startswith("CIFAKE"):
            continue
        p_stored = det.predict(images)
        p_jpeg = det.predict(np.stack([as_jpeg(im, args.quality) for im in images]))
        print(
            f"{name:30s} {len(images):6d} {p_stored.mean():14.3f} {p_jpeg.mean():12.3f} "
            f"{auc(p_real, p_stored):11.3f} {auc(p_real, p_jpeg):9.3f}"
        )


if __name__ == "__main__":
    main()
