"""End-to-end ``fakescope scan`` throughput: files on disk to results.jsonl, task1.json and report.

    python -m ops.bench.bench_scan [--data ../shared/data/cifake_train_subset] [--n 2000] [--checkpoint DIR]

Copies nothing: scans the first ``--n`` files of the folder through the same ``run_scan`` as the CLI,
with and without GradCAM overlays, and prints images/s for each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fakescope.detector import Detector
from fakescope.machine import describe
from fakescope.scan import run_scan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifake_train_subset")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--checkpoint")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    files = sorted(f for f in Path(args.data).rglob("*") if f.is_file())
    files = files[:: max(1, len(files) // args.n)][: args.n]
    detector = Detector.load(args.checkpoint, device="auto")
    print(f"machine: {describe()}")
    print(f"model: {detector.model_version}; {len(files)} files from {args.data}; batch {args.batch_size}")
    for overlays in (False, True):
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            s = run_scan(files, out, detector=detector, batch_size=args.batch_size, overlays=overlays, progress=False)
            dt = time.perf_counter() - t
        print(f"overlays={'on ' if overlays else 'off'}: {s.total} images in {dt:.1f}s = {s.total / dt:.1f} images/s")


if __name__ == "__main__":
    main()
