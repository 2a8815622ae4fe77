"""Load test of the job service: many concurrent clients, at least 10,000 images, nothing lost.

    python -m ops.load_test                          # starts its own native stack (2 classify workers)
    python -m ops.load_test --api URL --key KEY      # against a running stack

Run from the repository root: the stack is the tests' harness (``tests.utils.stack``), through
``ops.bench.bench_service.Bench``.

Each of ``--clients`` async clients submits ``--jobs`` jobs of ``--images`` unique 32x32 PNGs (with an
idempotency key, as a platform would), then polls its jobs until they finish. At the end every job's
results and failures are read back and checked: each image exactly one result or one error, no position
twice. Prints accepted images/s (images over the submit phase), p50/p95/p99 of submit and status
calls, the end-to-end images/s, and the count lost, which must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from fakescope.machine import describe
from ops.bench.bench_service import Bench, add_bench_arguments, pct


def _png(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def client(
    n: int,
    api: str,
    key: str,
    jobs: int,
    images: int,
    submit_ms: list[float],
    status_ms: list[float],
    submitted_at: list[float],
) -> list[tuple[str, int]]:
    rng = np.random.default_rng(1_000_000 + n)
    out = []
    async with httpx.AsyncClient(base_url=api, headers={"X-API-Key": key}, timeout=600) as c:
        for _ in range(jobs):
            files = [("files", (f"{i}.png", _png(rng), "image/png")) for i in range(images)]
            key = f"load-{uuid.uuid4()}"
            t = time.perf_counter()
            for _attempt in range(10):
                r = await c.post("/v1/jobs", files=files, headers={"Idempotency-Key": key})
                if r.status_code != 503:
                    break
                # Saturated: retry as a client should, same idempotency key, so never two jobs.
                await asyncio.sleep(float(r.headers.get("Retry-After", "5")))
            submit_ms.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
            out.append((r.json()["id"], images))
        submitted_at.append(time.perf_counter())
        pending = [job_id for job_id, _ in out]
        while pending:
            await asyncio.sleep(0.5)
            still = []
            for job_id in pending:
                t = time.perf_counter()
                r = await c.get(f"/v1/jobs/{job_id}")
                status_ms.append((time.perf_counter() - t) * 1000)
                if r.json()["state"] not in ("succeeded", "partially_succeeded", "failed", "cancelled"):
                    still.append(job_id)
            pending = still
    return out


def count_lost(api: str, key: str, jobs: list[tuple[str, int]]) -> tuple[int, int]:
    """(lost, duplicated) over all jobs: positions with no answer, and positions answered twice."""
    lost = dup = 0
    with httpx.Client(base_url=api, headers={"X-API-Key": key}, timeout=120) as c:
        for job_id, n in jobs:
            positions: list[int] = []
            for kind in ("results", "failures"):
                offset = 0
                while True:
                    page = c.get(f"/v1/jobs/{job_id}/{kind}", params={"offset": offset, "limit": 1000}).json()
                    positions += [x["position"] for x in page["data"]]
                    offset += len(page["data"])
                    if not page["data"] or offset >= page["count"]:
                        break
            lost += len(set(range(n)) - set(positions))
            dup += len(positions) - len(set(positions))
    return lost, dup


def run(api: str, key: str, args: argparse.Namespace) -> None:
    submit_ms: list[float] = []
    status_ms: list[float] = []
    submitted_at: list[float] = []
    total = args.clients * args.jobs * args.images

    async def main() -> list[list[tuple[str, int]]]:
        return await asyncio.gather(*[
            client(i, api, key, args.jobs, args.images, submit_ms, status_ms, submitted_at)
            for i in range(args.clients)
        ])  # fmt: skip

    t0 = time.perf_counter()
    per_client = asyncio.run(main())
    wall = time.perf_counter() - t0
    jobs = [j for js in per_client for j in js]
    lost, dup = count_lost(api, key, jobs)
    submit_wall = max(submitted_at) - t0  # until the last client's last job was accepted
    print(f"machine: {describe()}")
    print(f"{args.clients} clients x {args.jobs} jobs x {args.images} images = {total} images, {len(jobs)} jobs")
    print(f"accepted: {total / submit_wall:.0f} images/s (submit phase, all clients together)")
    print(f"submit latency (ms, {len(submit_ms)} calls): p50 {pct(submit_ms, 50):.0f}, "
          f"p95 {pct(submit_ms, 95):.0f}, p99 {pct(submit_ms, 99):.0f}")  # fmt: skip
    print(f"status latency (ms, {len(status_ms)} calls): p50 {pct(status_ms, 50):.1f}, "
          f"p95 {pct(status_ms, 95):.1f}, p99 {pct(status_ms, 99):.1f}")  # fmt: skip
    print(f"all {total} images answered in {wall:.0f} s: {total / wall:.0f} images/s end to end")
    print(f"lost: {lost}, answered twice: {dup}")
    if lost or dup:
        raise SystemExit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api")
    p.add_argument("--key")
    p.add_argument("--clients", type=int, default=40)
    p.add_argument("--jobs", type=int, default=5, help="jobs per client")
    p.add_argument("--images", type=int, default=50, help="images per job")
    p.add_argument("--workers", type=int, default=2, help="classify workers of the stack started here")
    add_bench_arguments(p, redis_db=14)
    args = p.parse_args()
    if args.api:
        run(args.api, args.key, args)
        return
    with tempfile.TemporaryDirectory(prefix="fakescope-load-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start()
            bench.start_workers(args.workers)
            run(bench.api_url, bench.key, args)
        finally:
            bench.close()


if __name__ == "__main__":
    main()
