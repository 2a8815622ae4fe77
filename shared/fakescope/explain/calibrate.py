"""Measures the evidence signals on photos and generated images and writes the tables the explainer reads.

Usage (from the repository root; this is the command that wrote the shipped file)::

    fakescope export-split --split train --out runs/train-split
    python -m fakescope.explain.calibrate --data runs/train-split \\
        --data ../shared/data/genimage_explained --limit 2000 --out shared/fakescope/explain/calibration.json

Each ``--data`` folder must hold ``REAL/`` and ``FAKE/`` sub-folders (the detector's training split:
never its validation or calibration images). Images are
decoded and shrunk exactly as the classify pipeline does for its display image (at most 384 px a
side), then bucketed by size (:func:`fakescope.explain.signals.size_bucket`): every statistic
depends on resolution, so 32x32 thumbnails and 256x256 photos get separate tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fakescope.explain.signals import SIGNALS, measure, size_bucket
from fakescope.imageio import IMAGE_SUFFIXES, ImageError, decode_image, to_rgb_array

__all__ = ["LEVELS", "calibrate", "main"]

logger = logging.getLogger(__name__)

LEVELS = np.linspace(0.0, 1.0, 101)

# Matches fakescope.pipeline.OVERLAY_MAX_SIDE, the size of the display image explainers receive;
# not imported from there because the pipeline pulls in torch and this command does not need it.
DISPLAY_MAX_SIDE = 384

REFERENCE_NAMES = {"small": "real 32x32 photos", "large": "real photos"}


def _display(path: Path) -> np.ndarray:
    im = decode_image(path.read_bytes())
    im.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE))
    return to_rgb_array(im)


def _files(root: Path, label: str, limit: int | None) -> list[Path]:
    folder = root / label
    if not folder.is_dir():
        raise FileNotFoundError(f"{root} has no {label}/ folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None and len(files) > limit:
        # An even stride keeps every CIFAR class (files are sorted by name, classes interleaved).
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
    return files


def _auc(fake: np.ndarray, real: np.ndarray) -> float:
    """P(a fake's value > a real's), ties half: the ROC-AUC of the signal read as "higher is fake"."""
    both = np.concatenate([fake, real])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # mean rank over ties
    r_fake = ranks[: len(fake)].sum()
    return float((r_fake - len(fake) * (len(fake) + 1) / 2) / (len(fake) * len(real)))


def _quantiles(v: list[float]) -> list[float]:
    return [float(f"{q:.6g}") for q in np.quantile(np.asarray(v), LEVELS)]


def calibrate(data: Sequence[str | Path], limit: int | None = None) -> dict:
    """Measures every signal on the REAL and FAKE images under ``data`` and returns
    the calibration dict: per size bucket and signal, the real photos' quantiles, the generated
    images' quantiles and the signal's ROC-AUC (fakes higher), from which the explainer reads how much
    more common a measured value is in generated images than in photos."""
    values: dict[str, dict[str, dict[str, list[float]]]] = {}
    sources: dict[str, dict[str, int]] = {}
    for root in map(Path, data):
        for label in ("REAL", "FAKE"):
            for path in _files(root, label, limit):
                try:
                    rgb = _display(path)
                except (ImageError, OSError) as e:
                    logger.warning("skipping %s: %s", path, e)
                    continue
                bucket = size_bucket(*rgb.shape[:2])
                m = measure(rgb).values
                table = values.setdefault(bucket, {"REAL": {s: [] for s in SIGNALS}, "FAKE": {s: [] for s in SIGNALS}})
                for s in SIGNALS:
                    table[label][s].append(m[s])
                key = f"{root}/{label}"
                sources.setdefault(bucket, {})
                sources[bucket][key] = sources[bucket].get(key, 0) + 1
    buckets = {}
    for bucket, table in sorted(values.items()):
        real, fake = table["REAL"], table["FAKE"]
        n, n_fake = len(real["hf_energy"]), len(fake["hf_energy"])
        signals: dict[str, dict[str, object]] = {}
        for s in SIGNALS:
            entry: dict[str, object] = {"median": float(f"{np.median(real[s]):.6g}"), "quantiles": _quantiles(real[s])}
            if n_fake and n:
                entry["fake_median"] = float(f"{np.median(fake[s]):.6g}")
                entry["fake_quantiles"] = _quantiles(fake[s])
                entry["auc"] = round(_auc(np.asarray(fake[s]), np.asarray(real[s])), 4)
            signals[s] = entry
        buckets[bucket] = {
            "n": n,
            "n_fake": n_fake,
            "reference": REFERENCE_NAMES[bucket],
            "sources": sources[bucket],
            "signals": signals,
        }
        logger.info("bucket %s: %d real, %d generated images", bucket, n, n_fake)
    return {"format": 2, "levels": [round(float(x), 4) for x in LEVELS], "buckets": buckets}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fakescope.explain.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", action="append", required=True, help="folder with REAL/ and FAKE/ sub-folders (repeatable)"
    )
    parser.add_argument("--out", required=True, help="calibration JSON to write")
    parser.add_argument("--limit", type=int, help="at most this many REAL and this many FAKE images per folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cal = calibrate(args.data, args.limit)
    cal["produced_by"] = {
        "command": "python -m fakescope.explain.calibrate "
        + " ".join(f"--data {d}" for d in args.data)
        + (f" --limit {args.limit}" if args.limit else "")
        + f" --out {args.out}",
        "note": "quantiles of each signal over the REAL and the FAKE images of each --data folder, by size "
        "bucket, and each signal's ROC-AUC (FAKE higher)",
    }
    Path(args.out).write_text(json.dumps(cal, indent=1) + "\n")
    print(f"wrote {args.out}: " + ", ".join(f"{b} n={t['n']}" for b, t in cal["buckets"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
