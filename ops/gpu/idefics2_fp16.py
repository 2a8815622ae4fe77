"""Idefics2 explainer latency and tokens/s in fp16 on a CUDA GPU, through the production loader.

Usage::

    python -m ops.gpu.idefics2_fp16 --model HuggingFaceM4/idefics2-8b [--lora runs/idefics2-lora]
    python -m ops.gpu.idefics2_fp16 --tiny          # a tiny random-weight Idefics2 built from config

It loads the model with ``Idefics2Explainer.load`` (fp16, accelerate device map), prompts it the way
the ``vlm`` backend does, and prints per-batch latency, generated tokens per second and peak GPU
memory. With ``--fixed-length`` every answer runs to ``--max-new-tokens`` (end-of-answer tokens are
ignored), so tokens/s compares across models and runs; without it the figures are those of real use.
``--allow-cpu`` runs it on a CPU (fp32) as a smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ARTIFACTS = [
    "Frequency domain signatures",
    "Artificial smoothness",
    "Unrealistic specular highlights",
]


def _images(data: str | None, n: int, size: int) -> list[np.ndarray]:
    from PIL import Image

    if data:
        paths = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:n]
        if paths:
            return [np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in paths]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Idefics2 hub id or local folder")
    src.add_argument("--tiny", action="store_true", help="build a tiny random-weight Idefics2 instead")
    p.add_argument("--lora", help="LoRA adapter folder")
    p.add_argument("--data", default="../shared/data/genimage_explained/FAKE", help="images to use, if present")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=5, help="timed batches (after one warm-up batch)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--fixed-length", action="store_true", help="always generate --max-new-tokens tokens")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (smoke test, fp32)")
    args = p.parse_args(argv)

    import torch

    from fakescope.explain.idefics import Idefics2Explainer

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device: this script measures GPU inference (use --allow-cpu for a CPU smoke run)")
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    source = args.model
    if args.tiny:
        from tests.utils.tiny_explain import save_tiny_idefics2

        source = str(save_tiny_idefics2(Path(tempfile.mkdtemp()) / "tiny-idefics2"))

    t0 = time.perf_counter()
    writer = Idefics2Explainer.load(source, lora=args.lora, device=device, max_new_tokens=args.max_new_tokens)
    load_s = time.perf_counter() - t0
    dtype = writer.model.dtype
    if device == "cuda":
        assert dtype == torch.float16, f"expected fp16 weights on the GPU, got {dtype}"
        torch.cuda.reset_peak_memory_stats()

    images = _images(args.data, args.batch_size * (args.batches + 1), args.image_size)
    while len(images) < args.batch_size * (args.batches + 1):
        images += images
    extra = {"min_new_tokens": args.max_new_tokens} if args.fixed_length else {}
    pad_id = writer.processor.tokenizer.pad_token_id

    def run(batch: list[np.ndarray]) -> tuple[float, int]:
        enc = writer.encode(batch, [ARTIFACTS] * len(batch))
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        new = writer.generate_ids(enc, **extra)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, int((new != pad_id).sum()) if pad_id is not None else new.numel()

    run(images[: args.batch_size])  # warm-up: CUDA kernels, allocator, caches
    lat, toks = [], []
    for b in range(1, args.batches + 1):
        s, n = run(images[b * args.batch_size : (b + 1) * args.batch_size])
        lat.append(s)
        toks.append(n)

    name = "tiny Idefics2 (random weights)" if args.tiny else source
    print(f"model      {name}{' + LoRA ' + args.lora if args.lora else ''}")
    print(f"device     {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}, dtype {dtype}")
    print(f"load       {load_s:.1f} s")
    print(f"batch      {args.batch_size} images of {args.image_size}px, max_new_tokens {args.max_new_tokens}")
    print(
        f"latency    mean {statistics.mean(lat):.3f} s, p50 {statistics.median(lat):.3f} s, "
        f"max {max(lat):.3f} s per batch; {statistics.mean(lat) / args.batch_size:.3f} s per image"
    )
    print(f"tokens/s   {sum(toks) / sum(lat):.1f} ({sum(toks)} new tokens in {sum(lat):.2f} s)")
    print(f"images/s   {args.batch_size * len(lat) / sum(lat):.2f}")
    if device == "cuda":
        print(f"peak mem   {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
