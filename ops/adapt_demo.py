"""Is fine-tuning on a platform's own images worth having? A generator family the base never saw.

The shipped small route (vgg3_wide, trained on CIFAKE alone) has never seen an autoregressive model's
images. This takes a few hundred of PixelCNN++'s (multigen/small, the autoregressive family) as a
platform's corrections would bring them, adds as many CIFAKE fakes and twice as many CIFAKE reals so
the old generators are not forgotten, and fine-tunes the base with the registry's code and recipe
(fakescope.finetune, what a train worker runs for ``fakescope models train``: same epochs, batch and
learning rate as the service's defaults). It prints the AUC of the shipped model and of the candidate
on the family's other images, on the GAN family (not trained on, either time), and on CIFAKE images,
each against real CIFAR-domain photos neither model trained on (multigen/small/REAL).

    python ops/adapt_demo.py                     # under 10 minutes on 2 busy CPU cores
    python ops/adapt_demo.py --family-images 300 --epochs 3 --eval-images 1000 --threads 2
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from fakescope.detector import DEFAULT_CHECKPOINT
from fakescope.finetune import FineTune, assemble_candidate, compare, run_epoch, split_source
from fakescope.settings import ModelsSettings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = DATA / "multigen" / "small"
CIFAKE = DATA / "cifake_train_subset"
FAMILY = "pixelcnn-pp"  # the autoregressive family's one generator at 32x32


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def _link(files: Sequence[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        os.symlink(f.resolve(), dest / f"{f.parent.name}__{f.name}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family-images", type=int, default=300, help="the new family's images fine-tuned on")
    ap.add_argument("--epochs", type=int, default=ModelsSettings().epochs)
    ap.add_argument("--eval-images", type=int, default=1000, help="GAN-family fakes (and CIFAKE images) scored")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep the work folder here (default: a temporary one)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    defaults = ModelsSettings()

    family = _images(SMALL / "FAKE" / FAMILY)
    rng.shuffle(family)
    tune_family, eval_family = family[: args.family_images], family[args.family_images :]
    gans = [p for d in sorted((SMALL / "FAKE").iterdir()) if d.name != FAMILY for p in _images(d)]
    gans = sorted(rng.sample(gans, min(args.eval_images, len(gans))))
    reals = _images(SMALL / "REAL")  # CIFAR-domain photos: in neither model's training data
    cifake_fake, cifake_real = _images(CIFAKE / "FAKE"), _images(CIFAKE / "REAL")
    rng.shuffle(cifake_fake)
    rng.shuffle(cifake_real)
    n, half = args.family_images, args.eval_images // 2

    work = args.work or Path(tempfile.mkdtemp(prefix="adapt-demo-"))
    shutil.rmtree(work / "sets", ignore_errors=True)
    # The platform's corrections: the new family's images, and as many of the old generator's with twice
    # as many reals, so the fine-tune learns the new traces without unlearning the old ones.
    source = work / "sets" / "platform"
    _link(tune_family + cifake_fake[:n], source / "FAKE")
    _link(cifake_real[: 2 * n], source / "REAL")
    sets = {}
    for key, name, fakes, real in (
        ("family", f"{FAMILY} (new family)", eval_family, reals),
        ("gan", "GAN family (never trained on)", gans, reals),
        # CIFAKE_train_subset is in the base's training data: this row checks only that nothing was forgotten.
        ("cifake", "CIFAKE (the base's own data)", cifake_fake[n : n + half], cifake_real[2 * n : 2 * n + half]),
    ):
        folder = work / "sets" / key
        _link(fakes, folder / "FAKE")
        _link(real, folder / "REAL")
        sets[name] = folder

    train_dir, hold_dir, counts = split_source(source, work / "run", defaults.holdout_share)
    ft = FineTune(
        base=DEFAULT_CHECKPOINT,
        train_dir=train_dir,
        out=work / "run" / "out",
        epochs=args.epochs,
        batch_size=defaults.batch_size,
        lr=defaults.lr,
        threads=args.threads,
        route="small",
        seed=args.seed,
    )
    t0 = time.time()
    for epoch in range(args.epochs):
        rec = run_epoch(ft, epoch, counts["train_real"] + counts["train_fake"])
        print(f"epoch {epoch + 1}: loss {rec['train_loss']:.4f} ({rec['seconds']:.0f} s)", flush=True)
    candidate = assemble_candidate(ft, work / "run" / "candidate")
    trained = time.time() - t0
    table = compare(DEFAULT_CHECKPOINT, candidate, {"platform hold-out": hold_dir, **sets})

    print(
        f"\nfine-tuned the shipped small route on {counts['train_fake']} fakes ({FAMILY} and CIFAKE) and "
        f"{counts['train_real']} reals, {args.epochs} epochs, in {trained:.0f} s\n"
    )
    print("| set | images | shipped AUC | fine-tuned AUC | shipped acc | fine-tuned acc |")
    print("|---|---|---|---|---|---|")
    for name, s in table.items():
        print(
            f"| {name} | {s['n']} | {s['live']['auc']:.3f} | {s['candidate']['auc']:.3f} "
            f"| {s['live']['accuracy']:.3f} | {s['candidate']['accuracy']:.3f} |"
        )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
