"""Does resize history mark multigen/full's families? Measured on the fold checkpoints, no training.

    python -m ops.resize_history                                   # the shipped arm's folds
    python -m ops.resize_history --variant vgg3_wide_npr           # another arm's

Every ``multigen/full`` image had its shorter side resized to 224 with Lanczos from its original size
and was saved as a quality-90 JPEG, both labels (the data's README). The original sizes differ by
source: ``dalle-mini`` wrote 256-pixel images, so its images were barely resampled (256 -> 224), while
the reals' originals are mostly 300 to 1,000 pixels and more, so theirs were shrunk two to five times.
How much a Lanczos resize shrank an image shows in its finest detail, so resize history could be a
label in a fold, as compression history was at 32x32. Two tables:

1. No model: each fold's ROC-AUC of "the smaller the original, the more likely fake" (the manifest's
   ``orig_width`` / ``orig_height``), its held-out fakes against every real. Far from 0.5: a model
   that could read the resize factor from the pixels would score that fold without any generator
   trace, in one direction or the other.
2. Each fold's checkpoint (``ops/protocol.py``'s folders under ``runs/protocol/full``; folds not
   trained are skipped) on its held-out fakes and its validation reals, scored as stored and after
   round trips of the reals: one quality-90 JPEG re-save (the control: a second compression and
   nothing else), and a Lanczos resize to ``--side`` and back to 224, then the same re-save (the
   256 -> 224 step ``dalle-mini``'s images had, on top of the reals' own). If the model reads resize
   history, that step moves the reals' mean probability of fake and the fold's ROC-AUC far more than
   the re-save alone does; the last column gives the fakes the same round trip, so that only what
   the two labels still differ in is scored.
3. (The last two columns of table 2.) The round trip cannot give a stored image the detail a larger
   original had; what a network could read instead is how much detail an image has for its content,
   which falls with the original's size. So, per fold, the rank correlation between the probability
   of fake and the log original shorter side, within the validation reals and within the held-out
   fakes: negative where the network calls the less-shrunk images of the same label more fake.
"""

from __future__ import annotations

import argparse
import csv
import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fakescope.checkpoint import Preprocess, load_checkpoint
from fakescope.data import LABELS, as_jpeg
from fakescope.models import Network
from fakescope.train import holdout_set, predict_arrays
from ops.compression_history import auc
from ops.protocol import MANIFEST, Arm, fold_config, fold_dir, folds

SIDE = 224  # what multigen/full stores and the full route reads


def fake_probability(net: Network, preprocess: Preprocess, images: np.ndarray) -> np.ndarray:
    """The network's probability of fake for each image, at temperature 1 (ROC-AUC does not need one)."""
    logits = predict_arrays(net, images, preprocess, torch.device("cpu"))
    return torch.softmax(logits, dim=1)[:, LABELS.index("fake")].numpy()


def lanczos_round_trip(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` (``SIDE`` x ``SIDE``) resized to ``side`` and back with Lanczos, as the data's own step was."""
    im = Image.fromarray(image).resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(im.resize((SIDE, SIDE), Image.Resampling.LANCZOS), dtype=np.uint8)


def resaved(images: np.ndarray, side: int = 0, quality: int = 90) -> np.ndarray:
    """Each image re-saved as a quality-``quality`` JPEG, after a Lanczos round trip to ``side`` if set."""
    return np.stack([as_jpeg(lanczos_round_trip(im, side) if side else im, quality) for im in images])


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` from 0, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=r) / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (NaN where either side is constant)."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def original_sides(manifest: Path) -> dict[str, int]:
    """``full`` file path (as the manifest and the loaded names spell it) -> its original shorter side."""
    with open(manifest, newline="") as f:
        return {
            row["file"]: min(int(row["orig_width"]), int(row["orig_height"]))
            for row in csv.DictReader(f)
            if row["track"] == "full"
        }


def size_only(manifest: Path) -> dict[str, float]:
    """Fold -> ROC-AUC of the negated original shorter side, held-out fakes against every real."""
    shorter: dict[str, list[float]] = {}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            if row["track"] == "full":
                key = "real" if row["label"] == "real" else row["generator"]
                shorter.setdefault(key, []).append(-float(min(int(row["orig_width"]), int(row["orig_height"]))))
    reals = np.asarray(shorter["real"])
    return {
        fold: auc(reals, np.concatenate([shorter[g] for g in held if g in shorter]))
        for fold, held in folds("full", "family").items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/protocol", help="the fold checkpoints (ops/protocol.py's --out)")
    p.add_argument("--variant", default="vgg3_wide_stem", help="the arm's network")
    p.add_argument("--epochs", type=int, default=16, help="the arm's epochs (the shipped budget: 16)")
    p.add_argument("--side", type=int, default=256, help="the round trip's size (dalle-mini's originals: 256)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")

    print("1. original size alone: ROC-AUC of 'smaller original = fake', held-out fakes against every real")
    for fold, value in size_only(MANIFEST).items():
        print(f"{fold:16s} {value:6.3f}")

    arm = Arm(variant=args.variant, scratch=True, epochs=args.epochs)
    print(f"\n2. {args.variant}, {args.epochs} epochs: held-out fakes against each fold's validation reals")
    head = ["fold", "n fake", "n real", "p real", "p re-saved", f"p {args.side}+re-saved"]
    head += ["AUC stored", "AUC re-saved", f"AUC {args.side}", f"AUC {args.side} both"]
    head += ["rho real", "rho fake"]
    sides = original_sides(MANIFEST)
    print(" ".join(f"{h:>14s}" for h in head))
    for fold, held in folds("full", "family").items():
        out = fold_dir(Path(args.out), "full", fold, "model", arm)
        if not (out / "model.safetensors").exists():
            print(f"{fold:>14s} (no checkpoint at {out})")
            continue
        hold = holdout_set(fold_config("full", fold, held, "model", out, arm))
        net, meta = load_checkpoint(out, device)
        p_fake = partial(fake_probability, net, meta.preprocess)

        fakes, reals = hold.images[hold.labels == 1], hold.images[hold.labels == 0]
        pf, pr = p_fake(fakes), p_fake(reals)
        pr_jpeg = p_fake(resaved(reals))
        pr_side = p_fake(resaved(reals, args.side))
        pf_side = p_fake(resaved(fakes, args.side))
        row = [f"{fold:>14s}", f"{len(fakes):14d}", f"{len(reals):14d}"]
        row += [f"{v:14.3f}" for v in (pr.mean(), pr_jpeg.mean(), pr_side.mean())]
        row += [f"{v:14.3f}" for v in (auc(pr, pf), auc(pr_jpeg, pf), auc(pr_side, pf), auc(pr_side, pf_side))]
        log_side = np.log([sides[n] for n in hold.names])
        is_fake = hold.labels == 1
        row += [f"{spearman(pr, log_side[~is_fake]):14.3f}", f"{spearman(pf, log_side[is_fake]):14.3f}"]
        print(" ".join(row), flush=True)


if __name__ == "__main__":
    main()
