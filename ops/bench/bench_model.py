"""Model-only throughput of every variant: images/s by batch size and thread count, FLOPs/image, and
the achieved FLOP/s against the machine's measured peak (a matmul of the same dtype).

    python -m ops.bench.bench_model [--variants freqnet_resnet_tiny] [--batch-sizes 1 32 256] [--threads 1 2]
    python -m ops.bench.bench_model --checkpoints runs/release/previous shared/fakescope/weights/default \
        --batch-sizes 32 --threads 2

``--checkpoints`` times what a worker runs per batch of already-decoded images: a checkpoint's
whole detector (normalisation, the forward pass, mirror TTA when the checkpoint uses it, the
domain score when it has one), not just the bare network.

Random weights give the same speed as trained ones. Inference mode, fp32 on CPU (bf16 autocast on
a GPU when one is present), channels_last; each figure is the best of ``--repeats`` timed runs after
a warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fakescope.machine import describe
from fakescope.models import create_model, list_models


def flops_per_image(model: torch.nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return float(fc.get_total_flops())


def peak_gflops(device: str, dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """The machine's measured matmul rate in ``dtype``: the ceiling a convolutional network can approach."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    a @ b
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def images_per_s(model: torch.nn.Module, batch: int, size: int, device: str, repeats: int) -> float:
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        model(x)
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    return batch / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list_models())
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32, 128])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--checkpoints", nargs="+", help="time these checkpoints' detectors instead of bare variants")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {describe()}")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peaks = {}
    for threads in args.threads if device == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        peaks[threads] = peak_gflops(device, dtype)
        name = str(dtype).removeprefix("torch.")
        print(f"peak: {name} matmul 1024x1024, {threads} threads: {peaks[threads]:.1f} GFLOP/s")
    print(
        f"{'variant':<22}{'params':>10}{'MFLOP/img':>11}{'threads':>9}{'batch':>7}{'img/s':>10}{'GFLOP/s':>9}"
        f"{'of peak':>9}"
    )
    if args.checkpoints:
        _bench_checkpoints(args, device)
        return
    for name in args.variants:
        model = create_model(name).eval()
        flops = flops_per_image(model, args.size)
        n_params = sum(p.numel() for p in model.parameters())
        model = model.to(device).to(memory_format=torch.channels_last)
        for threads in args.threads if device == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            for bs in args.batch_sizes:
                ips = images_per_s(model, bs, args.size, device, args.repeats)
                print(
                    f"{name:<22}{n_params / 1e6:>9.2f}M{flops / 1e6:>11.1f}{threads:>9}{bs:>7}"
                    f"{ips:>10.1f}{ips * flops / 1e9:>9.2f}{ips * flops / 1e9 / peaks[threads]:>9.1%}",
                    flush=True,
                )


def _bench_checkpoints(args: argparse.Namespace, device: str) -> None:
    from fakescope.detector import Detector

    print(f"{'checkpoint':<48}{'tta':>5}{'domain':>8}{'threads':>9}{'batch':>7}{'img/s':>10}")
    for path in args.checkpoints:
        det = Detector.load(path, device=device)
        for threads in args.threads if device == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            for bs in args.batch_sizes:
                batch = torch.randint(0, 256, (bs, *det.input_size, 3), dtype=torch.uint8).numpy()
                det.analyze(batch)
                best = float("inf")
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    det.analyze(batch)
                    best = min(best, time.perf_counter() - t)
                label = f"{det.model_version} ({path})"[:47]
                print(
                    f"{label:<48}{det.meta.tta_hflip!s:>5}{det.domain is not None!s:>8}{threads:>9}{bs:>7}"
                    f"{bs / best:>10.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
