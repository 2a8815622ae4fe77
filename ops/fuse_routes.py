"""Would fusing the two routes help the full-size route? Asked on that route's own calibration split.

    python -m ops.fuse_routes

The ``full`` route's logit and the ``small`` route's logit on the same image shrunk to 32x32 (what the
32x32 model saw of full-size images before the routing) are combined by a logistic fit on the
``full`` checkpoint's calibration split of ``multigen/full`` and scored on its validation split.
``genimage_explained`` is never read: a fusion chosen for its sake would be tuned to what it measures.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from fakescope.data import load_labelled, make_split
from fakescope.detector import DEFAULT_CHECKPOINT, Detector
from fakescope.metrics import roc_auc


def margins(det: Detector, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The fake-minus-real logit of each image (before temperature)."""
    out = []
    for i in range(0, len(images), batch):
        lg = det.logits(images[i : i + batch]).float()
        out.append((lg[:, det.fake_index] - lg[:, 1 - det.fake_index]).cpu().numpy())
    return np.concatenate(out)


def fit_logistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights and bias of a logistic regression of ``y`` on the columns of ``x`` (LBFGS, no penalty)."""
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w[:-1] + w[-1], yt)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="a routed folder with small and full")
    ap.add_argument("--data", default="../shared/data/multigen/full", help="the full route's training data")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    full = Detector.load(f"{args.checkpoint}/full")
    small = Detector.load(f"{args.checkpoint}/small")
    rec = full.meta.training["config"]
    data = load_labelled([args.data], size=full.input_size)
    split = make_split(data.names, data.labels, rec["val_size"], rec["calib_size"], rec["seed"])
    if split.fingerprint(data.names) != full.meta.training["split"]["val_fingerprint"]:
        raise SystemExit(f"{args.data} does not reproduce the full route's validation split")
    parts = {}
    for name, idx in (("calibration", split.calib), ("validation", split.val)):
        images = data.images[idx]
        thumbs = np.stack([small.prepare(Image.fromarray(a)) for a in images])
        parts[name] = (np.stack([margins(full, images), margins(small, thumbs)], 1), data.labels[idx])
    w = fit_logistic(*parts["calibration"])
    print(f"fit on the calibration split: full {w[0]:.3f}, small {w[1]:.3f}, bias {w[2]:.3f}")
    print(f"small's weight relative to full's: {w[1] / w[0]:.3f}")
    for name, (x, y) in parts.items():
        print(
            f"{name:12s} ROC-AUC  full {roc_auc(y, x[:, 0]):.4f}  small {roc_auc(y, x[:, 1]):.4f}"
            f"  fused {roc_auc(y, x @ w[:2]):.4f}"
        )


if __name__ == "__main__":
    main()
