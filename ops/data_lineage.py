"""The training data's lineage, from multigen's manifest: sources, counts and licences per track.

    python -m ops.data_lineage --track full      # the table the model card quotes for the full route
    python -m ops.data_lineage --track small

Counts every file of the track by label, generator or source folder, source repository and licence,
so a model card lists what a model was trained on from the data itself, not from memory.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

MANIFEST = Path("../shared/data/multigen/manifest.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--track", choices=["full", "small"], required=True)
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    args = ap.parse_args()
    with args.manifest.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["track"] == args.track]
    # The folder under REAL/ or FAKE/: the generator for fakes, the source for reals.
    by = Counter((r["label"], r["file"].split("/")[2], r["family"], r["source_repo"], r["licence"]) for r in rows)
    print("| label | folder | family | source repository | licence | files |")
    print("|---|---|---|---|---|---|")
    for (label, gen, fam, repo, lic), n in sorted(by.items()):
        print(f"| {label} | `{gen}` | {fam} | {repo} | {lic} | {n:,} |")
    labels = Counter(r["label"] for r in rows)
    print(f"| **total** | | | | | **{len(rows):,}** ({labels['real']:,} real, {labels['fake']:,} fake) |")


if __name__ == "__main__":
    main()
