"""Which combination of trained checkpoints to ship, decided on the calibration split only.

    python -m ops.choose_ensemble runs/vgg-v1 runs/anchor-v1 runs/anchor-v2
    python -m ops.choose_ensemble shared/fakescope/weights/default runs/wide-v1   # an ensemble's members

An ensemble given here is taken apart into its members (named by the paths they were combined from);
``fakescope ensemble`` reads ``PATH#N`` for its member ``N``.

Every member is run once over the calibration split (plain and mirrored); every subset is then
scored as the equal-weight logit average ``fakescope ensemble`` would build, with and without mirror
TTA: accuracy and log-loss on the calibration split, and the cost in member forward passes. The
validation split is never read. Members must share the split (``fakescope ensemble`` checks it too).
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch
import torch.nn.functional as F

from fakescope.checkpoint import checkpoint_members
from fakescope.cli import DEFAULT_DATA
from fakescope.detector import Detector
from fakescope.evaluate import load_eval_data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("members", nargs="+", help="checkpoint folders trained on the same split")
    p.add_argument("--data", action="append", help="the sources they were trained on (default: ../shared/data)")
    p.add_argument("--batch-size", type=int, default=500)
    args = p.parse_args()
    logits: dict[str, dict[bool, torch.Tensor]] = {}
    labels = None
    fingerprint = None
    names: list[str] = []
    for spec in args.members:
        for path, net, meta in checkpoint_members(spec):
            det = Detector(net, meta, torch.device("cpu"))
            fp = det.meta.training["split"]["val_fingerprint"]
            if fingerprint not in (None, fp):
                raise SystemExit(f"{path} was trained on another split ({fp} != {fingerprint})")
            fingerprint = fp
            calib = load_eval_data(args.data or DEFAULT_DATA, det, split="calib")
            labels = torch.from_numpy(calib.labels)
            names.append(path)
            logits[path] = {}
            for tta in (False, True):
                det.meta.tta_hflip = tta
                chunks = [
                    det.logits(calib.images[i : i + args.batch_size]) for i in range(0, len(calib), args.batch_size)
                ]
                logits[path][tta] = torch.cat(chunks)
    assert labels is not None
    print(f"calibration split: {len(labels)} images (validation not read)")
    print(f"{'members':<60} {'tta':>5} {'passes':>6} {'calib acc':>10} {'calib nll':>10}")
    for k in range(1, len(names) + 1):
        for combo in itertools.combinations(names, k):
            for tta in (False, True):
                mean = torch.stack([logits[m][tta] for m in combo]).mean(0)
                acc = float((mean.argmax(1) == labels).float().mean())
                nll = float(F.cross_entropy(mean, labels))
                passes = len(combo) * (2 if tta else 1)
                print(f"{' + '.join(combo):<60} {tta!s:>5} {passes:>6} {acc:>10.4f} {nll:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
