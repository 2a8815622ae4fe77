"""Latency of the synchronous check (``POST /v1/detect``) beside the job path's, idle and under load.

    python -m ops.bench.bench_detect [--n 60] [--rate 2] [--load 2000] [--workers 1]

Run from the repository root. Starts the same native stack as ``ops.bench.bench_service`` (its own
Postgres database, private Redis queues, an S3 server, the API) and ``--workers`` classify workers
(the cores split between them), then sends ``--n`` single images at ``--rate`` requests a second
(open loop: a request leaves on schedule whether or not the last one was answered), each new bytes so
nothing is answered from the cache:

- idle: ``/v1/detect``, and single-image jobs polled every 0.25 s as the client polls;
- under load: the same while a ``--load``-image job is queued and running, which is where the
  check's priority on the classify queue matters.

Prints p50/p95/p99 (seconds from the request's first byte until the client has the verdict: the
check's answer, or the poll that sees the job finished) and how many checks answered 503. Figures
are printed, never asserted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fakescope.machine import describe
from ops.bench.bench_service import Bench, add_bench_arguments, multipart, pct
from tests.utils.stack import png_bytes


def _detect(bench: Bench, seed: int) -> tuple[float, int]:
    with bench.client() as c:
        t0 = time.perf_counter()
        r = c.post("/v1/detect", files={"file": (f"{seed}.png", png_bytes(seed), "image/png")})
        return time.perf_counter() - t0, r.status_code


def _job(bench: Bench, seed: int) -> tuple[float, int]:
    with bench.client() as c:
        t0 = time.perf_counter()
        job, _ = bench.run_job(c, [(f"{seed}.png", png_bytes(seed))])
        # What the client waits: until the poll that sees the job finished (every 0.25 s, as it polls).
        return time.perf_counter() - t0, 200 if job["state"] == "succeeded" else 0


def _open_loop(
    fn: Callable[[Bench, int], tuple[float, int]], bench: Bench, n: int, rate: float, seed0: int
) -> tuple[list[float], int]:
    """``n`` calls started every ``1 / rate`` s on their own threads; latencies of the 200s, and the 503 count."""
    with ThreadPoolExecutor(max_workers=64) as pool:
        futures = []
        t0 = time.perf_counter()
        for i in range(n):
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            futures.append(pool.submit(fn, bench, seed0 + i))
        results = [f.result() for f in futures]
    return [s for s, code in results if code == 200], sum(1 for _, code in results if code == 503)


def _line(name: str, lat: list[float], busy: int) -> str:
    if not lat:
        return f"{name:<28} no answers ({busy} x 503)"
    return (
        f"{name:<28} p50 {pct(lat, 50):6.2f}  p95 {pct(lat, 95):6.2f}  p99 {pct(lat, 99):6.2f}  "
        f"({len(lat)} answered, {busy} x 503)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60, help="single-image requests per measurement")
    p.add_argument("--rate", type=float, default=2.0, help="requests a second")
    p.add_argument("--load", type=int, default=2000, help="images of the background job in the loaded phase")
    p.add_argument("--workers", type=int, default=1)
    add_bench_arguments(p)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"machine: {describe()}")
    print(f"{args.n} single-image requests at {args.rate}/s, {args.workers} classify worker(s)")
    with tempfile.TemporaryDirectory(prefix="fakescope-bench-detect-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start()
            bench.start_workers(args.workers)
            print(_line("detect, idle", *_open_loop(_detect, bench, args.n, args.rate, 20_000_000)))
            print(_line("one-image job, idle", *_open_loop(_job, bench, args.n, args.rate, 21_000_000)))
            for name, fn, seed in (("detect", _detect, 22_000_000), ("one-image job", _job, 23_000_000)):
                load = [(f"load-{i}.png", png_bytes(seed + 500_000 + i)) for i in range(args.load)]
                with bench.client() as c:
                    big = c.post("/v1/jobs", files=multipart(load)).json()["id"]
                lat, busy = _open_loop(fn, bench, args.n, args.rate, seed)
                with bench.client() as c:
                    state = c.get(f"/v1/jobs/{big}").json()
                    c.delete(f"/v1/jobs/{big}")
                left = state["counts"]["queued"]
                print(_line(f"{name}, {args.load}-image job", lat, busy) + f"; {left} of its images still queued after")
        finally:
            bench.close()


if __name__ == "__main__":
    main()
