"""Trains the reconstruction bank (``fakescope.models.recon``) whose outputs are aligned fakes.

    python -m ops.train_recon --out ops/weights/recon              # about six minutes on two cores
    fakescope train ... --recon ops/weights/recon --recon-p 0.3    # a share of the fakes made from reals

Each autoencoder of the bank is trained to reconstruct CIFAKE real photos from the training part of
the default split (never its validation or calibration images, and never any other set's), with an
L1 loss, so it keeps the photo and adds only what its upsampling layer does. The PSNR of each on
1,000 other training-split reals is printed and saved in ``recon.json``: a bank that blurs too much
would teach "blurred" as "fake" instead of the upsampling trace.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from fakescope.models.recon import UPSAMPLERS, ReconBank, ReconConfig, save_recon
from ops.split_tiles import training_reals


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(F.mse_loss(a, b))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    # Bilinear is left out by default: its reconstructions are the blurriest (24.9 dB against 27.0 for
    # nearest and 31.1 for transposed), and a bank that blurs teaches "blurred" as "fake".
    ap.add_argument("--upsamplers", nargs="+", default=["transposed", "nearest"], choices=UPSAMPLERS)
    ap.add_argument("--steps", type=int, default=2500, help="optimiser steps per autoencoder")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    _, reals = training_reals()
    reals = reals[np.random.default_rng(args.seed).permutation(len(reals))]
    images = torch.from_numpy(reals).permute(0, 3, 1, 2).float().div_(255.0)
    test, train = images[:1000], images[1000:]
    bank = ReconBank(ReconConfig(upsamplers=tuple(args.upsamplers)))
    gen = torch.Generator().manual_seed(args.seed)
    record: dict[str, object] = {"steps": args.steps, "train_images": len(train), "psnr": {}}
    for i, kind in enumerate(args.upsamplers):
        ae = bank.members[i]
        opt = torch.optim.AdamW(ae.parameters(), lr=args.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
        t0 = time.time()
        for step in range(args.steps):
            x = train[torch.randint(0, len(train), (args.batch_size,), generator=gen)]
            x = torch.where(torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5, x.flip(-1), x)
            loss = F.l1_loss(ae(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 250 == 0:
                print(f"{kind}: step {step}/{args.steps} L1 {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
        ae.eval()
        with torch.no_grad():
            score = psnr(ae(test), test)
        record["psnr"][kind] = round(score, 2)  # type: ignore[index]
        print(f"{kind}: PSNR {score:.2f} dB on 1,000 held-back training reals ({time.time() - t0:.0f} s)", flush=True)
    save_recon(bank, args.out, record)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
