"""The ``fakescope`` command: scan, train, evaluate, export-split."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

DEFAULT_DATA = ["../shared/data/cifake_train_subset", "../shared/data/cifake_train_more.tar.gz"]


def _add_split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", help="CIFAKE-layout folder or archive (repeatable)")
    p.add_argument("--val-size", type=int, default=10_000, help="images held out for validation")
    p.add_argument("--calib-size", type=int, default=2_000, help="images held out for calibration")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")


def _cmd_train(args: argparse.Namespace) -> int:
    from fakescope.train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data or DEFAULT_DATA,
        out=args.out,
        variant=args.model,
        recipe=args.recipe,
        epochs=args.epochs if args.epochs is not None else (20 if args.recipe == "paper" else 12),
        batch_size=args.batch_size,
        lr=args.lr,
        val_size=args.val_size,
        calib_size=args.calib_size,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        resume=args.resume,
        max_train=args.max_train,
    )
    out = train(cfg)
    print(json.dumps(json.loads((out / "config.json").read_text())["metrics"], indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fakescope", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector on CIFAKE-layout data")
    _add_split_args(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--model", default="freqnet_resnet_tiny", help="variant name")
    p.add_argument("--recipe", choices=["fast", "paper"], default="fast")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--resume", action="store_true", help="continue from --out's last epoch")
    p.add_argument("--max-train", type=int, help="train on at most this many images (smoke runs)")
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
