"""How faithful the evidence explainer's reasons are: each artifact's citation rate on generated images
and on photos, and their ratio. A reason that is as common on photos as on fakes reads like evidence
but is not; the explainer is built to cite only values at least twice as common among fakes.

    fakescope export-split --split val --out runs/val           # the detector's validation split
    python -m ops.explain_faithfulness runs/val --limit 2000
    # choosing the thresholds: training images the calibration (--limit 2000) never saw
    python -m ops.explain_faithfulness runs/train-split --outside-calibration 2000 --limit 1000 --min-ratio 2

Reads ``REAL/`` and ``FAKE/`` under the folder (an even stride of ``--limit`` images of each), explains
every image as the pipeline would (the display image, no GradCAM map: the map depends on the checkpoint
and is never scored), and prints one row per artifact the explainer can cite, plus the share of images
with any reason. Nothing is asserted; the figures are printed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from fakescope.explain import ExplainInput
from fakescope.explain.evidence import RULES, EvidenceExplainer
from fakescope.imageio import IMAGE_SUFFIXES, ImageError, decode_image, to_rgb_array
from fakescope.overlay import display_image


def _files(folder: Path, limit: int | None, outside: int | None = None) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if outside:
        # The images `python -m fakescope.explain.calibrate --limit N` took (the same even stride) are
        # left out, so thresholds can be chosen on training images the calibration never saw.
        taken = {files[int(i)] for i in np.linspace(0, len(files) - 1, outside)} if len(files) > outside else set(files)
        files = [f for f in files if f not in taken]
    if limit is not None and len(files) > limit:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
    return files


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a labelled folder with REAL/ and FAKE/")
    p.add_argument("--limit", type=int, default=2000, help="images of each label (an even stride)")
    p.add_argument("--calibration", help="calibration JSON (default: the shipped one)")
    p.add_argument("--min-ratio", type=float, help="the explainer's least likelihood ratio (default: its own)")
    p.add_argument("--outside-calibration", type=int, help="leave out what calibrate --limit N took from this folder")
    args = p.parse_args()
    explainer = EvidenceExplainer.load(args.calibration)
    if args.min_ratio is not None:
        explainer.min_ratio = args.min_ratio
    cited: dict[str, Counter[str]] = {}
    counts: dict[str, int] = {}
    with_any: dict[str, int] = {}
    for label in ("FAKE", "REAL"):
        cited[label], counts[label], with_any[label] = Counter(), 0, 0
        for path in _files(args.folder / label, args.limit, args.outside_calibration):
            try:
                im = decode_image(path.read_bytes())
            except (ImageError, OSError):
                continue
            inp = ExplainInput(path.name, display_image(im), to_rgb_array(im, (32, 32)), None, 0.5)
            items = explainer.evidence_one(inp)
            counts[label] += 1
            with_any[label] += bool(items)
            cited[label].update(e["artifact"] for e in items)
    print(
        f"{args.folder}: {counts['FAKE']} generated images, {counts['REAL']} photos; "
        f"calibration {explainer.calibration.source}, min ratio {explainer.min_ratio}"
    )
    print(f"{'artifact':<52} {'on fakes':>9} {'on reals':>9} {'ratio':>7}")
    artifacts = sorted({r.artifact for r in RULES} & (set(cited["FAKE"]) | set(cited["REAL"])))
    rows = []
    for a in artifacts:
        f = cited["FAKE"][a] / max(1, counts["FAKE"])
        r = cited["REAL"][a] / max(1, counts["REAL"])
        rows.append((f / r if r else float("inf"), a, f, r))
    for ratio, a, f, r in sorted(rows, reverse=True):
        print(f"{a:<52} {f:>8.1%} {r:>8.1%} {ratio:>7.2f}")
    f_any, r_any = with_any["FAKE"] / max(1, counts["FAKE"]), with_any["REAL"] / max(1, counts["REAL"])
    print(f"{'any reason':<52} {f_any:>8.1%} {r_any:>8.1%} {f_any / max(r_any, 1e-9):>7.2f}")
    print(
        f"reasons per image: {sum(cited['FAKE'].values()) / max(1, counts['FAKE']):.2f} on fakes, "
        f"{sum(cited['REAL'].values()) / max(1, counts['REAL']):.2f} on reals"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
