"""The keyless signed GETs of an item's overlay and original: limited per job (a token bucket sized
from the job) and per API process, with overlay draws held to a memory budget; a bulk download still
completes because the client waits the Retry-After it is told.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from api.limits import TokenBuckets
from fakescope.client import FakescopeClient, _get
from fakescope.service.overlays import DRAW_MEMORY_BYTES
from tests.api.test_limits import second_api, second_api_proc
from tests.utils.images import gradient_png
from tests.utils.stack import REDIS_URL, ServiceStack, png_bytes

OVERLAY_ROUTE = "/v1/jobs/{job_id}/items/{position}/overlay.png"
IMAGE_ROUTE = "/v1/jobs/{job_id}/items/{position}/image"


def _job(st: ServiceStack, files: list[tuple[str, bytes]], timeout: float = 180) -> tuple[str, list[dict]]:
    """A finished job of ``files`` on the session's API: its id and its results."""
    with st.client() as c:
        r = c.post("/v1/jobs", files=[("files", (n, b, "image/png")) for n, b in files])
        assert r.status_code == 202, r.text
        job = st.wait_job(r.json()["id"], timeout=timeout)
        assert job["counts"]["done"] == len(files), job
        results = c.get(f"/v1/jobs/{job['id']}/results", params={"limit": 1000}).json()["data"]
    return job["id"], results


def _on(api: str, url: str) -> str:
    """``url`` (a signed URL of the session's API) on another API process of the same stack."""
    parts = urlsplit(url)
    return f"{api}{parts.path}?{parts.query}"


def _answered(api: str, route: str, status: int) -> float:
    """How many requests of ``route`` the API process at ``api`` answered with ``status`` (its metrics)."""
    text = httpx.get(f"{api}/metrics", timeout=30).text
    pattern = rf'fakescope_api_requests_total{{[^}}]*route="{re.escape(route)}"[^}}]*status="{status}"[^}}]*}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, text))


def test_a_token_bucket_refills_continuously_and_says_when() -> None:
    now = [100.0]
    buckets = TokenBuckets(None, clock=lambda: now[0])
    assert [buckets.take("a", 6) for _ in range(6)] == [0] * 6  # a minute's worth at once
    assert buckets.take("a", 6) == 10  # one token every 10 s
    assert buckets.take("b", 6) == 0  # per key
    now[0] += 9.5
    assert buckets.take("a", 6) == 1  # 0.95 of a token: half a second more, said as a whole second
    now[0] += 0.5
    assert buckets.take("a", 6) == 0
    now[0] += 3600
    assert [buckets.take("a", 6) for _ in range(7)] == [0] * 6 + [10]  # it never holds more than its size


def test_the_shared_bucket_in_redis_counts_what_the_local_one_does() -> None:
    # API replicas share one bucket per job in Redis (the test database of the stack's Redis server).
    buckets = TokenBuckets(f"{REDIS_URL.rstrip('/')}/11")
    key = f"test-{uuid.uuid4().hex}"
    assert [buckets.take(key, 3) for _ in range(3)] == [0, 0, 0]
    assert 1 <= buckets.take(key, 3) <= 20  # a token every 20 s, the wait rounded up


def test_replayed_signed_urls_are_refused_per_job_with_retry_after(service_stack: ServiceStack) -> None:
    # The attack: a job's signed URLs carry no key, so no key's rate limit; replayed, each GET reads an
    # original (or draws an overlay). Now each job's GETs draw on a bucket of its own, here of 5 a minute
    # (a 1-image job: its images' share, 1.5, is less). Forged URLs are refused without counting.
    (job_id, (item,)) = _job(service_stack, [("one.png", png_bytes(91_000))])
    (other_id, (other,)) = _job(service_stack, [("two.png", png_bytes(91_001))])
    tight = {"FAKESCOPE_SIGNED_GETS_PER_MINUTE": "5", "FAKESCOPE_SIGNED_GETS_PER_ITEM_PER_MINUTE": "1.5"}
    with second_api(service_stack, "api-signed-replay", **tight) as api:
        forged = _on(api, item["image_url"]).replace("signature=", "signature=0")
        assert {httpx.get(forged, timeout=30).status_code for _ in range(10)} == {403}
        codes = [httpx.get(_on(api, item["image_url"]), timeout=30) for _ in range(7)]
        assert [r.status_code for r in codes] == [200] * 5 + [429] * 2, [r.status_code for r in codes]
        refused = codes[-1]
        assert refused.json() == {"detail": "Rate limit of 5 requests a minute for this job's signed URLs"}
        assert 1 <= int(refused.headers["Retry-After"]) <= 12  # a token every 12 s
        # The overlay's URL draws on the same bucket; another job's on its own.
        assert httpx.get(_on(api, item["overlay_url"]), timeout=30).status_code == 429
        assert httpx.get(_on(api, other["overlay_url"]), timeout=30).status_code == 200
        # The metrics count the refusals under their route, like any other answer.
        assert _answered(api, IMAGE_ROUTE, 429) == 2 and _answered(api, OVERLAY_ROUTE, 429) == 1
    assert other_id != job_id


def test_a_bulk_download_of_a_job_larger_than_the_base_completes(service_stack: ServiceStack, tmp_path: Path) -> None:
    # 12 images, so 24 signed GETs (an overlay and an original each), against a base of 5 a minute: the
    # job's bucket is its images' share, 1.8 a minute each (21 tokens), which the download outruns by
    # three. The API answers those 429 with Retry-After; the client waits as told and completes.
    n = 12
    job_id, _ = _job(service_stack, [(f"{i}.png", png_bytes(91_010 + i)) for i in range(n)])
    tight = {"FAKESCOPE_SIGNED_GETS_PER_MINUTE": "5", "FAKESCOPE_SIGNED_GETS_PER_ITEM_PER_MINUTE": "1.8"}
    with second_api(service_stack, "api-signed-bulk", **tight) as api:
        t0 = time.monotonic()
        with FakescopeClient(api, service_stack.keys["a"]) as fs:
            out = fs.download(job_id, tmp_path / "out")
        took = time.monotonic() - t0
        refused = _answered(api, OVERLAY_ROUTE, 429) + _answered(api, IMAGE_ROUTE, 429)
    assert refused >= 3, refused
    assert len(list((out / "overlays").iterdir())) == len(list((out / "thumbs").iterdir())) == n
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in (out / "overlays").iterdir())
    assert len((out / "results.jsonl").read_text().splitlines()) == n
    print(f"downloaded {2 * n} signed URLs through {refused:.0f} refusals in {took:.1f} s")


def test_the_client_waits_the_retry_after_it_is_told() -> None:
    answers = iter([(429, "2"), (503, "1"), (503, None), (200, None)])
    slept: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status, after = next(answers)
        return httpx.Response(status, headers={"Retry-After": after} if after else {})

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        r = _get(http, "http://api/x", sleep=slept.append)
        # Waited 2 s, then 1 s (each with under half a second of jitter); a 503 that says nothing is
        # returned to the caller as it is.
        assert r.status_code == 503
        assert len(slept) == 2 and 2 <= slept[0] < 2.5 and 1 <= slept[1] < 1.5
        assert _get(http, "http://api/x", sleep=slept.append).status_code == 200


def _status_kb(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


@pytest.mark.slow
def test_concurrent_overlay_draws_of_large_pngs_stay_within_the_draw_budget(service_stack: ServiceStack) -> None:
    # The probe: 12 keyless overlay GETs over 700 KiB of uploads grew the API by 2.7 GB. Here 12 PNGs of
    # 36 megapixels (1.4 MiB in all) are asked for 24 times at once, every one a first draw. A PNG is
    # decoded whole; each draw reserves its decode's cost (324 MB by the PNG figure) from the process's
    # draw budget before reading anything, so these are drawn one at a time, and the API's peak
    # resident growth stays under the budget. The draws past the wait get 503 with Retry-After, and
    # every overlay is then fetched by waiting as told.
    n = 12
    _, results = _job(service_stack, [(f"big-{i}.png", gradient_png(10 + i)) for i in range(n)], timeout=300)
    with second_api_proc(service_stack, "api-draws") as (api, pid):
        urls = [_on(api, r["overlay_url"]) for r in results] * 2
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
        before = _status_kb(pid, "VmRSS") / 1024
        peak = [before]
        done = threading.Event()

        def watch() -> None:  # the kernel's high-water mark, read until the GETs are answered
            while not done.is_set():
                peak[0] = max(peak[0], _status_kb(pid, "VmHWM") / 1024)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(len(urls)) as pool:
                answers = list(pool.map(lambda u: httpx.get(u, timeout=120), urls))
        finally:
            done.set()
            watcher.join()
        peak[0] = max(peak[0], _status_kb(pid, "VmHWM") / 1024)
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503}, codes
        assert all(a.headers.get("Retry-After") for a in answers if a.status_code == 503)
        # Every overlay comes, to whoever waits as told.
        with httpx.Client(timeout=120) as http:
            pngs = [_get(http, u) for u in urls[:n]]
        assert all(p.status_code == 200 and p.content.startswith(b"\x89PNG") for p in pngs)
    grown = peak[0] - before
    print(
        f"24 concurrent first draws of 36 MP PNGs: {codes.count(200)} drawn, {codes.count(503)} told to wait;"
        f" peak growth {grown:.0f} MB"
    )
    assert grown < DRAW_MEMORY_BYTES / 2**20, f"the API grew by {grown:.0f} MB"
