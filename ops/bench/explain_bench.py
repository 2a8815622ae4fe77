"""Explanation throughput (images/s) of each explain backend on this machine.

Usage::

    python -m ops.bench.explain_bench                           # evidence, and vlm on tiny models
    python -m ops.bench.explain_bench --clip-model openai/clip-vit-base-patch32 \\
        --vlm-model HuggingFaceM4/idefics2-8b --backends vlm    # real weights

Images come from the shared data (256x256 GenImage fakes and 32x32 CIFAKE fakes), with the 32x32
detector input made the way the pipeline makes it. Each backend is loaded once (load time printed
separately), warmed up on one batch, then timed over ``--n`` images per size. Without
``--clip-model``/``--vlm-model`` the ``vlm`` row uses tiny random-weight models built from config:
that measures the backend's own overhead (preprocessing, prompting, parsing), not a real model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from fakescope.explain import Explainer, ExplainInput

DATA = Path("../shared/data")
SETS = {
    "256px": DATA / "genimage_explained" / "FAKE",
    "32px": DATA / "cifake_train_subset" / "FAKE",
}


def _inputs(folder: Path, n: int) -> list[ExplainInput]:
    from fakescope.explain import ExplainInput

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".png"})[:n]
    if not paths:
        raise SystemExit(f"no images in {folder}")
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        display = im.copy()
        display.thumbnail((384, 384))
        small = np.asarray(im.resize((32, 32), Image.Resampling.BICUBIC))
        out.append(ExplainInput(p.name, np.asarray(display), small, None, 0.9))
    while len(out) < n:
        out += out[: n - len(out)]
    return out


def _bench(explainer: Explainer, inputs: list[ExplainInput], batch_size: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second of this process).

    The second figure does not depend on what else the machine runs: on a shared or busy host it is
    the better estimate of what the backend costs (it sums all threads, so it understates a
    multi-threaded backend's wall-clock speed on an idle machine).
    """
    explainer.explain(inputs[:batch_size])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(inputs), batch_size):
        explainer.explain(inputs[i : i + batch_size])
    return len(inputs) / (time.perf_counter() - wall), len(inputs) / (time.process_time() - cpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="evidence,vlm", help="comma-separated: evidence, vlm")
    p.add_argument("--n", type=int, default=64, help="images per size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--clip-model", help="CLIP/SigLIP hub id or folder (default: tiny, built here)")
    p.add_argument("--vlm-model", help="Idefics2 hub id or folder (default: tiny, built here)")
    p.add_argument("--vlm-lora", help="LoRA adapter folder")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from fakescope.explain import load_explainer

    sets = {name: _inputs(folder, args.n) for name, folder in SETS.items()}
    print(
        f"host: {os.cpu_count()} CPUs, torch threads {_torch_threads()}, batch {args.batch_size}, {args.n} images/size"
    )
    for backend in args.backends.split(","):
        options: dict = {}
        label = backend
        if backend == "vlm":
            clip, vlm = args.clip_model, args.vlm_model
            if not clip or not vlm:
                from tests.utils.tiny_explain import save_tiny_clip, save_tiny_idefics2

                tmp = Path(tempfile.mkdtemp())
                clip = clip or str(save_tiny_clip(tmp / "clip"))
                vlm = vlm or str(save_tiny_idefics2(tmp / "idefics2"))
                label = "vlm (tiny random-weight models)"
            options = dict(
                clip_model=clip,
                vlm_model=vlm,
                vlm_lora=args.vlm_lora,
                max_new_tokens=args.max_new_tokens,
                device=args.device,
            )
        start = time.perf_counter()
        explainer = load_explainer(backend, **options)
        load_s = time.perf_counter() - start
        rates = {name: _bench(explainer, inputs, args.batch_size) for name, inputs in sets.items()}
        print(
            f"{label:<34} load {load_s:6.1f} s   "
            + "   ".join(f"{k}: {w:8.2f} img/s ({c:.2f} per CPU-s)" for k, (w, c) in rates.items())
        )
    return 0


def _torch_threads() -> str:
    try:
        import torch

        return str(torch.get_num_threads())
    except ImportError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
