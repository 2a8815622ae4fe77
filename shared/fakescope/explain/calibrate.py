"""Measures the evidence signals on real photos and writes the reference quantiles the explainer reads.

Usage (from the repository root; this is the command that wrote the shipped file)::

    python -m fakescope.explain.calibrate \\
        --data ../shared/data/cifake_train_subset --data ../shared/data/genimage_explained \\
        --out shared/fakescope/explain/calibration_real.json

Each ``--data`` folder must hold a ``REAL/`` sub-folder; only those images are read. Images are
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


def _real_files(root: Path, limit: int | None) -> list[Path]:
    real = root / "REAL"
    if not real.is_dir():
        raise FileNotFoundError(f"{root} has no REAL/ folder")
    files = sorted(p for p in real.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None and len(files) > limit:
        # An even stride keeps every CIFAR class (files are sorted by name, classes interleaved).
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
    return files


def calibrate(data: Sequence[str | Path], limit: int | None = None) -> dict:
    """Measures every signal on the REAL images under ``data`` and returns the calibration dict."""
    values: dict[str, dict[str, list[float]]] = {}
    sources: dict[str, dict[str, int]] = {}
    for root in map(Path, data):
        for path in _real_files(root, limit):
            try:
                rgb = _display(path)
            except (ImageError, OSError) as e:
                logger.warning("skipping %s: %s", path, e)
                continue
            bucket = size_bucket(*rgb.shape[:2])
            m = measure(rgb).values
            table = values.setdefault(bucket, {s: [] for s in SIGNALS})
            for s in SIGNALS:
                table[s].append(m[s])
            sources.setdefault(bucket, {})
            sources[bucket][str(root)] = sources[bucket].get(str(root), 0) + 1
    buckets = {}
    for bucket, table in sorted(values.items()):
        n = len(table["hf_energy"])
        buckets[bucket] = {
            "n": n,
            "reference": REFERENCE_NAMES[bucket],
            "sources": sources[bucket],
            "signals": {
                s: {
                    "median": float(f"{np.median(v):.6g}"),
                    "quantiles": [float(f"{q:.6g}") for q in np.quantile(np.asarray(v), LEVELS)],
                }
                for s, v in table.items()
            },
        }
        logger.info("bucket %s: %d real images", bucket, n)
    return {"format": 1, "levels": [round(float(x), 4) for x in LEVELS], "buckets": buckets}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fakescope.explain.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", required=True, help="folder with a REAL/ sub-folder (repeatable)")
    parser.add_argument("--out", required=True, help="calibration JSON to write")
    parser.add_argument("--limit", type=int, help="at most this many REAL images per folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cal = calibrate(args.data, args.limit)
    cal["produced_by"] = {
        "command": "python -m fakescope.explain.calibrate "
        + " ".join(f"--data {d}" for d in args.data)
        + (f" --limit {args.limit}" if args.limit else "")
        + f" --out {args.out}",
        "note": "quantiles of each signal over the REAL images of each --data folder, by size bucket",
    }
    Path(args.out).write_text(json.dumps(cal, indent=1) + "\n")
    print(f"wrote {args.out}: " + ", ".join(f"{b} n={t['n']}" for b, t in cal["buckets"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
