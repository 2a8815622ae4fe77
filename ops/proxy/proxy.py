"""The proxy protocol: compares training recipes and architectures in minutes, on a fixed budget.

Every row trains on the same seeded 20,000-image subset of the training part of the standard split
(seed 0: 10,000 validation and 2,000 calibration images held out, as for the shipped model), for the
same number of epochs, fits its temperature on the calibration split and is scored on a 5,000-image
*dev* split carved from the rest of the training part. The validation split is never touched, so
choices made from this table cannot leak into the validation figures of the model card.

    python -m ops.proxy.proxy                       # the ablation rows (1-6 minutes a row on 2 cores)
    python -m ops.proxy.proxy --rows shipped no_freq

Each finished row is appended to ``ops/proxy/results.jsonl`` (committed: the model card's ablation
table is made from it) with the exact configuration that produced it; ``--table`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fakescope.checkpoint import load_checkpoint
from fakescope.cli import DEFAULT_DATA
from fakescope.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results.jsonl"
BUDGET: dict[str, Any] = {"max_train": 20_000, "dev_size": 5_000, "epochs": 3, "seed": 0, "threads": 2}

# name -> (what the row is, TrainConfig fields beyond the budget)
SHIPPED: dict[str, Any] = {"variant": "freqnet_vgg", "lr": 2e-3}
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "shipped": ("freqnet_vgg, the shipped recipe", SHIPPED),
    "no_freq": (
        "freqnet_vgg without the frequency branch (no HFRI/HFRFS/FCL)",
        {**SHIPPED, "model_overrides": {"freq_merges": 0}},
    ),
    "wavelet": (
        "freqnet_vgg with wavelet attention in place of max pooling",
        {**SHIPPED, "model_overrides": {"wavelet": True}},
    ),
    "paper_recipe": (
        "freqnet_vgg, the paper's recipe (Adam 1e-3, plateau schedule, flips only)",
        {"variant": "freqnet_vgg", "recipe": "paper", "lr": 1e-3, "label_smoothing": 0.0},
    ),
    "vgg3_anchor": (
        "plain 3-block CNN, 0.29M (AdamW 1e-3, wd 1e-4, flips + 4-px shifts, no EMA)",
        {
            "variant": "vgg3_anchor",
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "label_smoothing": 0.0,
            "translate": 4,
            "ema_decay": 0.0,
            "robust_p": 0.0,
        },
    ),
    # The first candidate, residual basic blocks with wavelet attention: 4-5x slower per image
    # than the plain blocks on 2 cores, and no more accurate at this budget.
    "resnet_s": ("freqnet_resnet_s (basic blocks, wavelet attention, 2 merges)", {"variant": "freqnet_resnet_s"}),
    "resnet_s_no_freq": (
        "freqnet_resnet_s without the frequency branch",
        {"variant": "freqnet_resnet_s", "model_overrides": {"freq_merges": 0}},
    ),
    "resnet_s_no_wavelet": (
        "freqnet_resnet_s without wavelet attention (max pooling, strided 1x1 shortcuts)",
        {"variant": "freqnet_resnet_s", "model_overrides": {"wavelet": False}},
    ),
    "previous_default": (
        "freqnet_resnet_tiny (the previous default's architecture)",
        {"variant": "freqnet_resnet_tiny"},
    ),
}
DEFAULT_ROWS = ["shipped", "no_freq", "wavelet", "paper_recipe", "vgg3_anchor"]


def inference_images_per_s(checkpoint: Path, batch: int = 32, threads: int = 2, repeats: int = 20) -> float:
    """Model-only forward images/s at ``batch`` on ``threads`` (fp32, channels_last, best of runs)."""
    torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t)
    return batch / best


def run_row(name: str, out_root: Path) -> dict[str, Any]:
    what, fields = ROWS[name]
    cfg = TrainConfig(data=list(DEFAULT_DATA), out=str(out_root / name), **BUDGET, **fields)
    t0 = time.time()
    out = train(cfg)
    meta = json.loads((out / "config.json").read_text())
    history = meta["training"]["history"]
    dev = meta["metrics"]["dev"]
    return {
        "row": name,
        "what": what,
        "accuracy": dev["accuracy"],
        "roc_auc": dev["roc_auc"],
        "ece": dev["ece"],
        "n_dev": dev["n"],
        "train_images_per_s": sum(h["train_images_per_s"] for h in history) / len(history),
        "inference_images_per_s_b32_2t": inference_images_per_s(out),
        "params": sum(p.numel() for p in load_checkpoint(out)[0].parameters()),
        "wall_s": time.time() - t0,
        "config": asdict(cfg),
        "command": f"python -m ops.proxy.proxy --rows {name}",
        "date": time.strftime("%Y-%m-%d"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| row | what | params | dev accuracy | ROC-AUC | ECE | train img/s | inference img/s (b32, 2 thr) | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['row']}` | {r['what']} | {r['params'] / 1e6:.2f}M | {r['accuracy'] * 100:.2f}% | "
            f"{r['roc_auc']:.4f} | {r['ece']:.4f} | {r['train_images_per_s']:.0f} | "
            f"{r['inference_images_per_s_b32_2t']:.0f} | `{r['command']}` |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=DEFAULT_ROWS)
    p.add_argument("--out", default="runs/proxy", help="where the rows' checkpoints go (not committed)")
    p.add_argument("--table", action="store_true", help="print the recorded table and exit")
    args = p.parse_args()
    if not args.table:
        for name in args.rows:
            rec = run_row(name, Path(args.out))
            with RESULTS.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps({k: v for k, v in rec.items() if k != "config"}), flush=True)
    latest: dict[str, dict[str, Any]] = {}
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            rec = json.loads(line)
            latest[rec["row"]] = rec
    print(table([latest[r] for r in ROWS if r in latest]))


if __name__ == "__main__":
    main()
