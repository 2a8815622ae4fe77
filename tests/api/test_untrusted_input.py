"""The untrusted-input probes that had no test through the running service yet, each as an outsider
would send it to a real API process (and its workers, broker, Postgres and S3 server), with the
memory or time it may cost asserted on that process.

The rest of the probes are held elsewhere: see the table in ``docs/operations.md`` ("Limits on
untrusted input") and the tests named in each limit's commit.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from sqlmodel import col, select

from fakescope.db.models import WebhookDelivery
from fakescope.imageio import DEFAULT_MAX_MEMBERS
from fakescope.provenance import MAX_RECORD_CHARS
from fakescope.service.tenants import create_api_key
from tests.api.test_limits import second_api_proc
from tests.utils.slow_http import answer_before_body, trickle
from tests.utils.stack import ServiceStack, png_bytes, process_env, wait_until

MiB = 1024 * 1024


def _status_kb(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


@contextmanager
def peak_growth_mb(pid: int) -> Iterator[Callable[[], float]]:
    """How far the resident size of process ``pid`` rose above its size on entry, at its highest
    (the kernel's high-water mark, reset on entry), read once the block has run."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status_kb(pid, "VmRSS") / 1024
    grown: list[float] = []
    yield lambda: grown[0]
    grown.append(_status_kb(pid, "VmHWM") / 1024 - before)


def cpu_seconds(pid: int) -> float:
    """CPU time process ``pid`` has spent, user and system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _json_headers_only(api: str, key: str) -> bytes:
    return answer_before_body(api, key, 15 * MiB, content_type="application/json")


def test_item1_bad_and_throttled_keys_are_answered_before_any_body_byte(service_stack: ServiceStack) -> None:
    # The probe: any X-API-Key value, or a valid key over its rate limit, had its whole body received
    # and parsed first; four 15 MiB JSON bodies with a made-up key grew the API by 618 MB. Now both are
    # answered from the headers alone, four at once, and the API does not grow.
    with service_stack.svc.session() as session:
        key = create_api_key(session, tenant_name=f"gate-{uuid.uuid4().hex[:6]}")[1]
    with second_api_proc(service_stack, "api-gate", FAKESCOPE_RATE_LIMIT_PER_MINUTE="2") as (api, pid):
        with httpx.Client(base_url=api, headers={"X-API-Key": key}, timeout=30) as c:
            assert [c.get("/v1/jobs").status_code for _ in range(2)] == [200, 200]
        with peak_growth_mb(pid) as grown, ThreadPoolExecutor(8) as pool:
            made_up = list(pool.map(lambda _: _json_headers_only(api, "fks_made-up"), range(4)))
            throttled = list(pool.map(lambda _: _json_headers_only(api, key), range(4)))
    for answer in made_up:
        assert answer.startswith(b"HTTP/1.1 401") and b'"Invalid API key"' in answer, answer[:200]
    for answer in throttled:
        assert answer.startswith(b"HTTP/1.1 429") and b"retry-after: " in answer.lower(), answer[:300]
        assert b'"Rate limit of 2 requests a minute for this key"' in answer
    assert grown() < 20, f"the API grew by {grown():.0f} MB"


def _zeros_tar_gz(members: int, member_bytes: int, extra: dict[str, bytes]) -> bytes:
    """A .tar.gz of ``members`` members of ``member_bytes`` zeros each (then ``extra``), built from
    gzip members joined end to end (one gzip stream to a reader), so it is quick to make: the zeros
    are compressed once."""
    zeros = gzip.compress(b"\0" * member_bytes, 9)
    out = io.BytesIO()
    for i in range(members):
        info = tarfile.TarInfo(f"skip-{i}.png")
        info.size = member_bytes
        out.write(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
        out.write(zeros)
    tail = io.BytesIO()
    with tarfile.open(fileobj=tail, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out.write(gzip.compress(tail.getvalue()))
    return out.getvalue()


def _zip64_declaring(entries: int) -> bytes:
    """A zip64 end record and locator declaring ``entries`` members (past the 65,535 of a plain one)."""
    end64 = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, entries, entries, entries * 46, 0)
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, 0, 1)
    return end64 + locator + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)


def _zeros_zip(members: int, member_bytes: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(members):
            zf.writestr(f"z{i}.png", b"\0" * member_bytes)
    return buf.getvalue()


def test_item2_archives_expand_within_their_caps_in_the_api(service_stack: ServiceStack) -> None:
    # The probes: ten oversized members that are "skipped" were still decompressed (one API thread held
    # 22-35 s for a 0.97 MiB upload); a zip listing a million entries cost about 365 MB before the member
    # cap; members were read before the upload byte budget was asked for them (three concurrent uploads
    # grew the API by 531-810 MB against a 64 MiB budget). (The long-name header: test_limits.py.)
    skips = _zeros_tar_gz(10, 100 * MiB, {"inside.png": png_bytes(91_300)})
    assert len(skips) < 1.5 * MiB
    declared = DEFAULT_MAX_MEMBERS * 10
    budget = {"FAKESCOPE_UPLOAD_MEMORY_BYTES": str(32 * MiB)}
    headers = {"X-API-Key": service_stack.keys["a"]}
    with (
        second_api_proc(service_stack, "api-archives", **budget) as (api, pid),
        httpx.Client(base_url=api, headers=headers, timeout=300) as c,
    ):
        files = [
            ("files", ("skips.tar.gz", skips, "application/gzip")),
            ("files", ("million.zip", _zip64_declaring(declared), "application/zip")),
            ("files", ("ok.png", png_bytes(91_301), "image/png")),
        ]
        cpu0 = cpu_seconds(pid)
        with peak_growth_mb(pid) as grown_bombs:
            r = c.post("/v1/jobs", files=files)
        cpu = cpu_seconds(pid) - cpu0
        assert r.status_code == 202, r.text
        bombs_job = r.json()["id"]
        # Eight uploads at once, each a 49 KB zip that expands to 48 MiB (three 16 MiB members): every
        # member's bytes are asked of the process's 32 MiB budget before they are read.
        zips = [_zeros_zip(3, 16 * MiB) for _ in range(8)]
        with peak_growth_mb(pid) as grown_uploads, ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda z: c.post("/v1/jobs", files=[("files", ("z.zip", z, "application/zip"))]), zips)
            )
        assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    job = service_stack.wait_job(bombs_job)
    with service_stack.client() as c:
        failures = {f["name"]: f["error"] for f in c.get(f"/v1/jobs/{bombs_job}/failures").json()["data"]}
        results = [x["name"] for x in c.get(f"/v1/jobs/{bombs_job}/results").json()["data"]]
    assert results == ["ok.png"], (results, failures)
    assert failures["million.zip"] == f"archive has {declared} members, over the limit of {DEFAULT_MAX_MEMBERS}"
    assert failures["skips.tar.gz"].startswith("archive expands past the limit of"), failures
    assert job["counts"]["total"] == 3, job
    print(
        f"archives: {cpu:.2f} CPU-s and +{grown_bombs():.0f} MB for the bombs;"
        f" +{grown_uploads():.0f} MB for eight uploads of 48 MiB each under a 32 MiB budget"
    )
    # A gigabyte of skipped members costs what the archive's expansion cap allows (8x its size plus
    # 64 MiB: a fraction of a second), not the gigabyte; the declared directories cost nothing.
    assert cpu < 5, f"the API spent {cpu:.1f} CPU-seconds"
    assert grown_bombs() < 100, f"the API grew by {grown_bombs():.0f} MB"
    assert grown_uploads() < 32 + 96, f"the API grew by {grown_uploads():.0f} MB"


def _declaring_png(chunks: int, text_bytes: int) -> bytes:
    """A small PNG that declares its generator (Automatic1111's parameters) in compressed text chunks
    that inflate to ``chunks`` x ``text_bytes`` characters."""
    info = PngInfo()
    prompt = "a cat, " + "very " * (text_bytes // 5)
    info.add_itxt(
        "parameters", f"{prompt}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd-v1-5", zip=True
    )
    for i in range(chunks - 1):
        info.add_itxt(f"Comment{i}", "a" * text_bytes, zip=True)
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(91_310))).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_item9_provenance_in_results_is_bounded_whatever_the_file_declares(service_stack: ServiceStack) -> None:
    # The probe: a 0.06 MiB upload produced 16 MiB of provenance per item and a 64 MiB results page.
    data = _declaring_png(16, 1_000_000)  # 16 MB of text in 20 KB; Pillow inflates up to 1 MiB a chunk
    assert len(data) < 0.1 * MiB
    with service_stack.client() as c:
        r = c.post("/v1/jobs", files=[("files", (f"decl-{i}.png", data, "image/png")) for i in range(4)])
        assert r.status_code == 202, r.text
        service_stack.wait_job(r.json()["id"])
        page = c.get(f"/v1/jobs/{r.json()['id']}/results")
    assert page.status_code == 200
    items = page.json()["data"]
    assert len(items) == 4
    for item in items:
        assert item["prediction"] == "fake" and item["provenance"]["declares_ai"] is True, item["provenance"]
        assert len(json.dumps(item["provenance"])) <= MAX_RECORD_CHARS
    assert len(page.content) < 4 * (MAX_RECORD_CHARS + 4096), len(page.content)


class _Trickler(BaseHTTPRequestHandler):
    """A webhook receiver that answers 200 at once, then trickles its body a byte every 0.2 s for ten
    minutes: every read returns inside the read timeout, so only a deadline on the whole body ends it."""

    connections: ClassVar[list[float]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        _Trickler.connections.append(time.monotonic())
        self.send_response(200)
        self.end_headers()
        trickle(self.wfile)

    def log_message(self, *args: Any) -> None:
        pass


def test_item5_a_trickling_webhook_receiver_is_answered_logged_and_not_resent(service_stack: ServiceStack) -> None:
    # The probe: a receiver that answers 200 and trickles its body outlived the webhook task's time
    # limit, no delivery row was written, the status stayed pending, and the sweeper re-sent it every
    # interval without a cap (10-11 connections in 100 s, 0 delivery rows). Through the stack's webhooks
    # worker and a real sweeper process: one attempt, ended by its deadline, logged, and never re-sent.
    _Trickler.connections = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    callback = f"http://127.0.0.1:{server.server_address[1]}/hook"
    timeout_s = service_stack.svc.settings.callback.timeout_s
    try:
        with service_stack.client() as c:
            r = c.post(
                "/v1/jobs",
                files=[("files", ("w.png", png_bytes(91_320), "image/png"))],
                data={"callback_url": callback},
            )
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            service_stack.wait_job(job_id)
            job = wait_until(
                lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["callback_status"] != "pending" and j,
                120,
                "the webhook's outcome",
            )
        assert job["callback_status"] == "HTTP 200", job
        with service_stack.svc.session() as session:
            rows = session.exec(select(WebhookDelivery).where(col(WebhookDelivery.job_id) == uuid.UUID(job_id))).all()
        assert len(rows) == 1 and rows[0].status_code == 200, rows
        # The attempt ended at its deadline (connect, send, read, then at most the timeout draining the
        # body), far inside the ten minutes the body would take.
        assert rows[0].duration_ms is not None and rows[0].duration_ms < 3 * timeout_s * 1000, rows[0]
        # A sweep that re-sends every undelivered webhook at once finds nothing to re-send.
        env = process_env({**service_stack.svc.env, "FAKESCOPE_CALLBACK_REDELIVER_AFTER_S": "0.001"})
        sweep = subprocess.run(
            [sys.executable, "-m", "fakescope.service.sweeper", "--once"], env=env, capture_output=True, text=True
        )
        assert sweep.returncode == 0, sweep.stderr[-2000:]
        with service_stack.svc.session() as session:
            again = session.exec(select(WebhookDelivery).where(col(WebhookDelivery.job_id) == uuid.UUID(job_id))).all()
        assert [d.id for d in again] == [rows[0].id]  # a re-send would be a row of its own
        assert len(_Trickler.connections) == 1, _Trickler.connections
    finally:
        server.shutdown()
