"""What a classify worker does per image before the model, step by step, in microseconds an image.

    python -m ops.bench.bench_decode [--data ../shared/data/cifake_train_subset] [--n 2000] [--rounds 3]

On one thread, over the images of the benchmark's job (the first ``--n / 2`` of REAL and of FAKE),
already in memory: decoding (Pillow, size
checks), decoding and preparing the model input, the SHA-256, the provenance reader and the summary a
result row keeps, and ``fakescope.pipeline.decode_item`` as a whole (display copy off, as the workers
run it). Each figure is the best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from fakescope.detector import Detector
from fakescope.imageio import InputItem, decode_image
from fakescope.machine import describe
from fakescope.pipeline import decode_item
from fakescope.provenance import provenance_summary, read_provenance


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifake_train_subset")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--checkpoint")
    args = p.parse_args()
    files = [f for label in ("REAL", "FAKE") for f in sorted((Path(args.data) / label).iterdir())[: args.n // 2]]
    datas = [f.read_bytes() for f in files]
    detector = Detector.load(args.checkpoint, device="cpu")
    steps: dict[str, Callable[[bytes], object]] = {
        "decode": decode_image,
        "decode + model input": lambda d: detector.prepare(decode_image(d)),
        "sha256": lambda d: hashlib.sha256(d).hexdigest(),
        "provenance": lambda d: read_provenance(d).to_dict(),
        "provenance + row summary": lambda d: provenance_summary(read_provenance(d).to_dict()),
        "decode_item (all of it)": lambda d: decode_item(InputItem("x", lambda: d), detector, display=False),
    }
    print(f"machine: {describe()}")
    print(f"{len(datas)} files from {args.data}, {sum(map(len, datas)) / len(datas):.0f} bytes on average")
    for name, fn in steps.items():
        best = float("inf")
        for _ in range(args.rounds):
            t = time.perf_counter()
            for d in datas:
                fn(d)
            best = min(best, time.perf_counter() - t)
        print(f"{name:26s} {best / len(datas) * 1e6:7.1f} us/image")


if __name__ == "__main__":
    main()
