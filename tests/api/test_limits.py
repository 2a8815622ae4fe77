"""Request limits on a second API process with tight settings, sharing the session's stack services."""

from __future__ import annotations

import gzip
import io
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from api.limits import RateLimiter
from fakescope.service.tenants import create_api_key
from fakescope.settings import Settings
from serve.stack import Stack
from tests.utils.slow_http import answer_before_body
from tests.utils.stack import ServiceStack, free_port, png_bytes, wait_until


@contextmanager
def second_api(st: ServiceStack, name: str, **settings: str) -> Iterator[str]:
    """Another API process on the session's services with ``FAKESCOPE_*`` overrides; yields its URL."""
    with second_api_proc(st, name, **settings) as (url, _pid):
        yield url


@contextmanager
def second_api_proc(st: ServiceStack, name: str, **settings: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {**st.stack.env, **settings, "FAKESCOPE_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    stack = Stack(env=env, log_dir=st.stack.log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        proc = stack.start_api(port=port, name=name)
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200, 120, f"API {name}")
        yield url, proc.pid
    finally:
        stack.stop_all()


def _rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (uvicorn may run the app in a child), in MB."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def _chunks(total: int, size: int = 1024 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        sent += size
        yield b"{" + b" " * (size - 1)


def test_chunked_bodies_are_counted_and_anonymous_ones_never_read(service_stack: ServiceStack) -> None:
    # The probe: an unauthenticated, chunked (no Content-Length) 400 MB body made the API grow by
    # 2.4 GB before it answered 422. Now it is refused before the body is read, and an authenticated
    # chunked body is cut off at the route's limit as it arrives.
    with second_api_proc(service_stack, "api-chunked", FAKESCOPE_MAX_JSON_BYTES="1048576") as (url, pid):
        before = _rss_mb(pid)
        with httpx.Client(base_url=url, timeout=120) as anon:
            r = anon.post(
                "/v1/jobs/uploads", content=_chunks(400 * 1024 * 1024), headers={"Content-Type": "application/json"}
            )
        assert (r.status_code, r.json()) == (401, {"detail": "Missing API key"})
        with service_stack.svc.session() as session:
            key = create_api_key(session, tenant_name=f"chunked-{uuid.uuid4().hex[:6]}")[1]
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as c:
            r = c.post(
                "/v1/jobs/uploads", content=_chunks(50 * 1024 * 1024), headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 413, r.text
            assert r.json() == {"detail": "Request body over the limit of 1048576 bytes"}
            assert _rss_mb(pid) - before < 150
            # A body under the limit still works.
            ok = c.post("/v1/jobs/uploads", json={"names": ["a.png"]})
            assert ok.status_code == 201, ok.text


def test_oversized_bodies_get_413_and_each_key_is_rate_limited(service_stack: ServiceStack) -> None:
    tight = {"FAKESCOPE_RATE_LIMIT_PER_MINUTE": "8", "FAKESCOPE_MAX_REQUEST_BYTES": "20000"}
    with second_api(service_stack, "api-limits", **tight) as url:
        # Fresh keys: the count is shared by every API process (it lives in Redis), and the session's
        # tenant keys have been busy on the main API this minute.
        with service_stack.svc.session() as session:
            key_a = create_api_key(session, tenant_name=f"limits-a-{uuid.uuid4().hex[:6]}")[1]
            key_b = create_api_key(session, tenant_name=f"limits-b-{uuid.uuid4().hex[:6]}")[1]
        a = httpx.Client(base_url=url, headers={"X-API-Key": key_a}, timeout=30)
        b = httpx.Client(base_url=url, headers={"X-API-Key": key_b}, timeout=30)
        with a, b:
            big = [("files", ("big.png", b"\0" * 30_000, "image/png"))]
            r = a.post("/v1/jobs", files=big)
            assert r.status_code == 413 and "limit of 20000 bytes" in r.json()["detail"]
            codes = [a.get("/v1/jobs").status_code for _ in range(12)]  # a moving window: no boundary to cross
            # The 413 above never reached authentication, so it used none of the 8.
            assert codes[:8] == [200] * 8 and set(codes[8:]) == {429}, codes
            r = a.get("/v1/jobs")
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert "8 requests a minute" in r.json()["detail"]
            # Per key: tenant b is not slowed by tenant a; unauthenticated requests are 401, not 429.
            assert b.get("/v1/jobs").status_code == 200
            assert httpx.get(f"{url}/v1/jobs", timeout=30).status_code == 401
            ok = b.post("/v1/jobs", files=[("files", ("s.png", png_bytes(77), "image/png"))])
            assert ok.status_code == 202, ok.text


def test_the_rate_limiter_counts_a_moving_window_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])  # the limiter's and the library's clock
    limiter = RateLimiter(Settings(broker_url=None, rate_limit_per_minute=3))
    assert [limiter.hit("a") for _ in range(3)] == [0, 0, 0]
    now[0] += 30
    assert limiter.hit("a") == 30  # the oldest of the three leaves the window 30 s from now
    assert limiter.hit("b") == 0  # per key
    now[0] += 31
    assert limiter.hit("a") == 0  # a moving window: 61 s after the first, one is free again
    assert RateLimiter(Settings(broker_url=None, rate_limit_per_minute=0)).hit("a") == 0  # 0: no limit


def test_database_down_gives_503_with_retry_after(service_stack: ServiceStack) -> None:
    """An API whose database is unreachable answers 503 with a clear body, not 500 and not a hang."""
    gone = {"FAKESCOPE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/gone"}
    with second_api(service_stack, "api-nodb", **gone) as url:
        headers = {"X-API-Key": service_stack.keys["a"]}
        r = httpx.get(f"{url}/v1/jobs", headers=headers, timeout=60)
        assert r.status_code == 503, r.text
        assert "database" in r.json()["detail"] and r.headers["Retry-After"] == "5"
        r = httpx.post(f"{url}/v1/jobs", headers=headers, files=[("files", ("a.png", png_bytes(5), "image/png"))])
        assert r.status_code == 503, r.text
        assert httpx.get(f"{url}/readyz", timeout=60).status_code == 503


def test_metrics_and_readiness_details_are_internal(service_stack: ServiceStack) -> None:
    with second_api(service_stack, "api-internal", FAKESCOPE_INTERNAL_TOKEN="internal-tok-8c1e") as url:
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 403
        wrong = {"Authorization": "Bearer internal-tok-xxxx"}
        assert httpx.get(f"{url}/metrics", headers=wrong, timeout=30).status_code == 403
        token = {"Authorization": "Bearer internal-tok-8c1e"}
        r = httpx.get(f"{url}/metrics", headers=token, timeout=30)
        assert r.status_code == 200 and "fakescope_queue_depth" in r.text
        # Everyone may ask whether it is ready; only an internal caller learns what each check said.
        assert httpx.get(f"{url}/readyz", timeout=30).json() == {"status": "ready"}
        details = httpx.get(f"{url}/readyz", headers=token, timeout=30).json()
        assert details == {"database": "ok", "storage": "ok", "broker": "ok"}


def test_a_bad_key_is_refused_before_its_body_is_received(service_stack: ServiceStack) -> None:
    # The probe: a 300 MiB upload with a made-up key was spooled to disk before the 401. Now the key
    # is looked up (and its rate limit counted) before the first byte of the body arrives.
    answer = answer_before_body(
        service_stack.api_url, "fks_made-up-key", 300 * 1024 * 1024, content_type="multipart/form-data; boundary=x"
    )
    assert answer.startswith(b"HTTP/1.1 401") and b'"Invalid API key"' in answer, answer[:200]


def _longname_tar_gz() -> bytes:
    """The probe: a GNU long-name header declaring a 512 MiB name (4 MiB of it present, gzip makes that
    tiny)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        header = tarfile.TarInfo("././@LongLink")
        header.type = tarfile.GNUTYPE_LONGNAME
        header.size = 512 * 1024 * 1024
        f.write(header.tobuf(format=tarfile.GNU_FORMAT))
        f.write(b"\0" * (4 * 1024 * 1024))
    return buf.getvalue()


def test_archive_headers_do_not_grow_the_api(service_stack: ServiceStack) -> None:
    # The probe: a 0.5 MiB .tar.gz whose long-name header declares 512 MiB grew the API by 1.0-1.5 GB.
    # Now the header is refused as it is met: that archive fails as one item, the image beside it is
    # classified, and the API process grows by far less than the header declared.
    archive = _longname_tar_gz()
    assert len(archive) < 1024 * 1024
    with second_api_proc(service_stack, "api-archive") as (url, pid):
        before = _rss_mb(pid)
        headers = {"X-API-Key": service_stack.keys["a"]}
        with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
            files = [
                ("files", ("longname.tar.gz", archive, "application/gzip")),
                ("files", ("ok.png", png_bytes(71_900), "image/png")),
            ]
            r = c.post("/v1/jobs", files=files)
            grown = _rss_mb(pid) - before
            assert r.status_code == 202, r.text
    job = service_stack.wait_job(r.json()["id"])
    with service_stack.client() as c:
        failures = c.get(f"/v1/jobs/{job['id']}/failures").json()["data"]
        results = c.get(f"/v1/jobs/{job['id']}/results").json()["data"]
    assert [x["name"] for x in results] == ["ok.png"]
    assert len(failures) == 1 and "long-name header of 536870912 bytes" in failures[0]["error"], failures
    assert grown < 150, f"the API grew by {grown:.0f} MB"
