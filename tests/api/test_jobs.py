"""The job API end to end: real uvicorn, Redis broker, Celery workers, Postgres, S3 server and Flower."""

from __future__ import annotations

import functools
import io
import json
import threading
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlmodel import Session, col, select

from fakescope.db.engine import get_engine
from fakescope.db.models import Job, WebhookDelivery
from fakescope.detector import Detector
from fakescope.imageio import InputItem, iter_inputs
from fakescope.pipeline import classify_items
from fakescope.service.webhooks import verify_signature
from tests.utils.stack import ServiceStack, png_bytes, wait_until

pytestmark = pytest.mark.slow


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _all_results(c: httpx.Client, job_id: str, page: int = 64) -> list[dict]:
    out: list[dict] = []
    while True:
        r = c.get(f"/v1/jobs/{job_id}/results", params={"offset": len(out), "limit": page})
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["data"]
        if not body["data"] or len(out) >= body["count"]:
            return out


def test_200_images_end_to_end_match_scan(service_stack: ServiceStack, tiny_checkpoint: Path, tmp_path: Path) -> None:
    # 150 loose images and a zip of 50: both upload forms, numbered like the task's files.
    loose = {f"{i}.png": png_bytes(i) for i in range(1, 151)}
    zipped = {f"{i}.png": png_bytes(i) for i in range(151, 201)}
    files = [("files", (n, d, "image/png")) for n, d in loose.items()]
    files.append(("files", ("batch.zip", _zip(zipped), "application/zip")))

    with service_stack.client() as c:
        r = c.post("/v1/jobs", files=files)
        assert r.status_code == 202, r.text
        created = r.json()
        assert created["state"] in ("queued", "running")  # a warm worker may have started already
        assert created["counts"]["total"] == 200
        assert created["status_url"] == f"{service_stack.api_url}/v1/jobs/{created['id']}"
        job = service_stack.wait_job(created["id"], timeout=400)
        assert job["state"] == "succeeded", job
        by_status = {k: job["counts"].pop(k) for k in ("real", "fake", "uncertain", "out_of_domain")}
        assert job["counts"] == {
            "total": 200,
            "queued": 0,
            "done": 200,
            "failed": 0,
            "cancelled": 0,
            "awaiting_upload": 0,
            "explain_pending": 0,
        }
        assert job["started_at"] and job["finished_at"]
        results = _all_results(c, created["id"])
        # At the default point (0.5, no band) every verdict is real or fake.
        assert by_status["uncertain"] == 0
        assert by_status["fake"] == sum(r["prediction"] == "fake" for r in results)
        assert by_status["real"] + by_status["fake"] == 200
        task1 = c.get(f"/v1/jobs/{created['id']}/task1.json").json()
        failures = c.get(f"/v1/jobs/{created['id']}/failures").json()
    assert failures["count"] == 0

    # What `fakescope scan` computes: the shared pipeline over the same files and checkpoint.
    (tmp_path / "in").mkdir()
    for n, d in loose.items():
        (tmp_path / "in" / n).write_bytes(d)
    (tmp_path / "in" / "batch.zip").write_bytes(_zip(zipped))
    detector = Detector.load(tiny_checkpoint, device="cpu")
    expected = {r.name: r for r in classify_items(detector, iter_inputs([tmp_path / "in"]), overlays=False)}

    def _bytes_of(name: str) -> bytes:
        return {**loose, **{f"batch.zip/{k}": v for k, v in zipped.items()}}[name]

    assert len(results) == 200
    assert sorted(r["name"] for r in results) == sorted(expected)
    for got in results:
        want = expected[got["name"]]
        assert want.error is None
        assert got["prediction"] == want.prediction, got["name"]
        assert got["fake_probability"] == pytest.approx(want.fake_probability, rel=1e-4, abs=1e-6), got["name"]
        assert got["sha256"] == want.sha256
        assert got["model_version"] == detector.model_version
        # The overlay is drawn by the API on the first GET of its signed URL (no key needed), from the
        # original and the grid the worker kept: the PNG `fakescope scan` writes. Byte for byte when the
        # grid is the same (tests/core/test_checkpoint_gradcam.py); here the worker's batch differs from
        # this single-image one, whose float rounding can move a pixel of the 8-bit map by one level.
        if got["position"] % 20 == 0:
            o = httpx.get(got["overlay_url"], timeout=30)
            assert o.status_code == 200 and o.headers["content-type"] == "image/png"
            data = _bytes_of(got["name"])
            (scan_overlay,) = classify_items(detector, [InputItem(got["name"], functools.partial(bytes, data))])
            assert scan_overlay.overlay_png is not None
            a = np.asarray(Image.open(io.BytesIO(o.content)), dtype=np.int16)
            b = np.asarray(Image.open(io.BytesIO(scan_overlay.overlay_png)), dtype=np.int16)
            assert a.shape == b.shape and np.abs(a - b).max() <= 4 and np.abs(a - b).mean() < 0.1, got["name"]
            assert httpx.get(got["overlay_url"], timeout=30).content == o.content  # stored, read back
            forged = got["overlay_url"].replace("signature=", "signature=0")
            assert httpx.get(forged, timeout=30).status_code == 403

    by_stem = {int(Path(n).stem): r.prediction for n, r in expected.items()}
    assert task1 == [{"index": i, "prediction": by_stem[i]} for i in range(1, 201)]

    # Flower, on the same broker, sees both pools.
    workers = wait_until(
        lambda: (
            (w := service_stack.flower_workers())
            and any(k.startswith("classify-") for k in w)
            and any(k.startswith("explain-") for k in w)
            and w
        ),
        60,
        "Flower to list both pools",
    )
    assert any(k.startswith("classify-") for k in workers)
    assert any(k.startswith("explain-") for k in workers)


class _Callbacks(BaseHTTPRequestHandler):
    """A webhook receiver: answers 503 to the first ``fail_first`` deliveries, then 204."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    fail_first: ClassVar[int] = 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Callbacks.received.append((dict(self.headers), body))
        failing = len(_Callbacks.received) <= _Callbacks.fail_first
        self.send_response(503 if failing else 204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_bad_inputs_fail_alone_and_callback_fires(service_stack: ServiceStack) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Callbacks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    callback = f"http://127.0.0.1:{server.server_address[1]}/done"
    files = [
        ("files", ("a.png", png_bytes(1), "image/png")),
        ("files", ("empty.png", b"", "image/png")),
        ("files", ("notes.txt", b"hello", "text/plain")),
        ("files", ("truncated.png", png_bytes(2)[:60], "image/png")),
        ("files", ("more.zip", _zip({"b.png": png_bytes(3), "c.jpg": b"\xff\xd8junk"}), "application/zip")),
    ]
    try:
        with service_stack.client() as c:
            r = c.post("/v1/jobs", files=files, data={"callback_url": callback})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            job = service_stack.wait_job(job_id)
            assert job["state"] == "partially_succeeded"
            assert (job["counts"]["done"], job["counts"]["failed"]) == (2, 4)
            results = c.get(f"/v1/jobs/{job_id}/results").json()
            failures = c.get(f"/v1/jobs/{job_id}/failures").json()
            task1 = c.get(f"/v1/jobs/{job_id}/task1.json").json()
        assert [r["name"] for r in results["data"]] == ["a.png", "more.zip/b.png"]
        reasons = {f["name"]: f["error"] for f in failures["data"]}
        assert set(reasons) == {"empty.png", "notes.txt", "truncated.png", "more.zip/c.jpg"}
        assert reasons["empty.png"] == "empty file (0 bytes)"
        assert reasons["notes.txt"].startswith("not an image in a supported format (JPEG")
        # Names are not all numbers: indices are positions in sorted name order.
        assert [t["index"] for t in task1] == [1, 3]
        # The first delivery got a 503 and was retried after a backoff; both are in the delivery log,
        # and each carries a signature the receiver verifies with the tenant's secret.
        wait_until(lambda: len(_Callbacks.received) >= 2, 60, "the retried webhook")
        with service_stack.client() as c:
            secret = c.get("/v1/webhook-secret").json()["secret"]
            log = wait_until(
                lambda: len(d := c.get(f"/v1/jobs/{job_id}/deliveries").json()["data"]) >= 2 and d, 30, "log"
            )
        for headers, body in _Callbacks.received[:2]:
            assert verify_signature(secret, body, headers["X-Fakescope-Signature"])
            assert not verify_signature(secret + "x", body, headers["X-Fakescope-Signature"])
            assert headers["X-Fakescope-Event"] == "job.finished"
        assert _Callbacks.received[0][0]["X-Fakescope-Delivery"] == _Callbacks.received[1][0]["X-Fakescope-Delivery"]
        got = json.loads(_Callbacks.received[1][1])
        assert got["job_id"] == job_id
        assert got["state"] == "partially_succeeded"
        assert got["counts"]["failed"] == 4
        assert [(d["attempt"], d["status_code"]) for d in log] == [(1, 503), (2, 204)]
    finally:
        server.shutdown()


def test_callback_urls_to_private_networks_are_refused(service_stack: ServiceStack) -> None:
    files = [("files", ("1.png", png_bytes(12), "image/png"))]
    with service_stack.client() as c:
        for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.7/hook", "file:///etc/passwd"):
            r = c.post("/v1/jobs", files=files, data={"callback_url": url})
            assert r.status_code == 422, (url, r.text)
            assert "callback_url" in r.json()["detail"]
        r = c.post("/v1/jobs/uploads", json={"names": ["a.png"], "callback_url": "http://[::ffff:127.0.0.2]/"})
        assert r.status_code == 422, r.text
        secret_a = c.get("/v1/webhook-secret").json()["secret"]
    # Each tenant has its own signing secret; rotating gives a new one.
    with service_stack.client("b") as b:
        secret_b = b.get("/v1/webhook-secret").json()["secret"]
        assert secret_b != secret_a and len(secret_b) == 64
        assert b.post("/v1/webhook-secret/rotate").json()["secret"] not in (secret_a, secret_b)


def test_second_tenant_gets_404(service_stack: ServiceStack) -> None:
    with service_stack.client("a") as a, service_stack.client("b") as b:
        r = a.post("/v1/jobs", files=[("files", ("1.png", png_bytes(7), "image/png"))])
        job_id = r.json()["id"]
        assert service_stack.wait_job(job_id)["state"] == "succeeded"
        assert a.get(f"/v1/jobs/{job_id}/results").json()["count"] == 1
        for path in ("", "/results", "/failures", "/task1.json", "/task2.json", "/deliveries"):
            r = b.get(f"/v1/jobs/{job_id}{path}")
            assert r.status_code == 404, path
            assert r.json() == {"detail": "Job not found"}
        assert b.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert b.post(f"/v1/jobs/{job_id}/start").status_code == 404
        assert job_id not in {j["id"] for j in b.get("/v1/jobs").json()["data"]}
        assert job_id in {j["id"] for j in a.get("/v1/jobs", params={"limit": 500}).json()["data"]}
        # The first tenant's job is untouched by the second tenant's DELETE.
        assert a.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"

    anon = httpx.get(f"{service_stack.api_url}/v1/jobs/{job_id}")
    assert (anon.status_code, anon.json()) == (401, {"detail": "Missing API key"})
    bad = httpx.get(f"{service_stack.api_url}/v1/jobs", headers={"X-API-Key": "fks_nope"})
    assert (bad.status_code, bad.json()) == (401, {"detail": "Invalid API key"})


def test_idempotency_key_returns_the_same_job(service_stack: ServiceStack) -> None:
    files = [("files", ("1.png", png_bytes(11), "image/png"))]
    with service_stack.client() as c:
        first = c.post("/v1/jobs", files=files, headers={"Idempotency-Key": "retry-me"})
        again = c.post("/v1/jobs", files=files, headers={"Idempotency-Key": "retry-me"})
        other = c.post("/v1/jobs", files=files, headers={"Idempotency-Key": "another"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.json()["id"] != first.json()["id"]
    assert again.json()["counts"]["total"] == 1


def test_an_idempotency_key_is_bound_to_its_first_request(service_stack: ServiceStack) -> None:
    files = [("files", ("1.png", png_bytes(13), "image/png"))]
    conflict = {"detail": "Idempotency-Key was already used with a different request"}
    with service_stack.client() as c:
        first = c.post("/v1/jobs", files=files, headers={"Idempotency-Key": "bound-1"})
        assert first.status_code == 202
        # Other files, other options, or the other route: the key does not answer them with this job.
        for kwargs in (
            {"files": [("files", ("2.png", png_bytes(14), "image/png"))]},
            {"files": files, "data": {"explain": "true"}},
        ):
            r = c.post("/v1/jobs", headers={"Idempotency-Key": "bound-1"}, **kwargs)
            assert (r.status_code, r.json()) == (422, conflict)
        r = c.post("/v1/jobs/uploads", json={"names": ["1.png"]}, headers={"Idempotency-Key": "bound-1"})
        assert (r.status_code, r.json()) == (422, conflict)
        up = c.post("/v1/jobs/uploads", json={"names": ["a.png"]}, headers={"Idempotency-Key": "bound-2"})
        same = c.post("/v1/jobs/uploads", json={"names": ["a.png"]}, headers={"Idempotency-Key": "bound-2"})
        assert same.json()["job"]["id"] == up.json()["job"]["id"]
        r = c.post("/v1/jobs/uploads", json={"names": ["b.png"]}, headers={"Idempotency-Key": "bound-2"})
        assert (r.status_code, r.json()) == (422, conflict)


@pytest.mark.parametrize("key", ["", "a" * 256, "bad key", "naïve"])
def test_idempotency_key_must_be_a_safe_token(service_stack: ServiceStack, key: str) -> None:
    # An empty key used to be a key: every such request of a tenant got the same job.
    files = [("files", ("1.png", png_bytes(12), "image/png"))]
    with service_stack.client() as c:
        r = c.post("/v1/jobs", files=files, headers={b"Idempotency-Key": key.encode("utf-8")})
        up = c.post("/v1/jobs/uploads", json={"names": ["1.png"]}, headers={b"Idempotency-Key": key.encode("utf-8")})
    for resp in (r, up):
        assert resp.status_code == 422, resp.text
        assert resp.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


def test_presigned_upload_then_start(service_stack: ServiceStack) -> None:
    with service_stack.client() as c:
        r = c.post("/v1/jobs/uploads", json={"names": ["1.png", "2.png", "3.png"]})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["job"]["state"] == "awaiting_upload"
        for up in body["uploads"][:2]:
            put = httpx.put(up["upload_url"], content=png_bytes(20 + up["position"]), timeout=30)
            assert put.status_code == 200, put.text
        r = c.post(f"/v1/jobs/{body['job']['id']}/start")
        assert r.status_code == 202, r.text
        again = c.post(f"/v1/jobs/{body['job']['id']}/start")
        assert (again.status_code, again.json()) == (409, {"detail": "Job already started"})
        job = service_stack.wait_job(body["job"]["id"])
        failures = c.get(f"/v1/jobs/{body['job']['id']}/failures").json()["data"]
    assert job["state"] == "partially_succeeded"
    assert [(f["name"], f["error"]) for f in failures] == [("3.png", "image was not uploaded")]


def test_readyz_healthz_metrics(service_stack: ServiceStack) -> None:
    assert httpx.get(f"{service_stack.api_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{service_stack.api_url}/readyz").json() == {"database": "ok", "storage": "ok", "broker": "ok"}
    metrics = httpx.get(f"{service_stack.api_url}/metrics").text
    q = service_stack.svc.settings.queue_classify
    assert f'fakescope_queue_depth{{queue="{q}"}} ' in metrics
    assert httpx.get(f"{service_stack.api_url}/openapi.json").json()["paths"]["/v1/jobs"]


def test_cancel_sends_a_signed_webhook(service_stack: ServiceStack) -> None:
    _Callbacks.received.clear()
    _Callbacks.fail_first = 0
    server = HTTPServer(("127.0.0.1", 0), _Callbacks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with service_stack.client() as c:
            # Presigned jobs wait for their uploads, so this one is surely unfinished when cancelled.
            r = c.post(
                "/v1/jobs/uploads",
                json={"names": ["x.png"], "callback_url": f"http://127.0.0.1:{server.server_address[1]}/c"},
            )
            job_id = r.json()["job"]["id"]
            assert c.delete(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
            wait_until(lambda: _Callbacks.received, 30, "the cancel webhook")
            secret = c.get("/v1/webhook-secret").json()["secret"]
            # Cancelling again changes nothing and sends nothing more.
            c.delete(f"/v1/jobs/{job_id}")
        headers, body = _Callbacks.received[0]
        assert verify_signature(secret, body, headers["X-Fakescope-Signature"])
        assert json.loads(body)["state"] == "cancelled"
        # Nothing more can be sent: the outbox says delivered (a webhook task sends only while it says
        # pending), and the delivery log has the one attempt.
        engine = get_engine(service_stack.svc.settings.sqlalchemy_url)

        def outbox() -> str | None:
            with Session(engine) as session:
                job = session.get(Job, uuid.UUID(job_id))
                return job.callback_status if job is not None else None

        wait_until(lambda: outbox() == "HTTP 204", 30, "the delivery's outcome in the outbox")
        with Session(engine) as session:
            attempts = session.exec(select(WebhookDelivery).where(col(WebhookDelivery.job_id) == uuid.UUID(job_id)))
            assert len(attempts.all()) == 1
        assert len(_Callbacks.received) == 1
    finally:
        server.shutdown()
        _Callbacks.fail_first = 1


class _HeldReceiver(BaseHTTPRequestHandler):
    """A receiver that holds every delivery until the test releases it."""

    release: ClassVar[threading.Event] = threading.Event()
    arrived: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        _HeldReceiver.arrived.set()
        _HeldReceiver.release.wait(120)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_slow_receiver_holds_no_request(service_stack: ServiceStack) -> None:
    # The only input is a corrupt archive, so the job finishes inside POST /v1/jobs. Its webhook goes to the webhooks
    # pool: the request answers while the receiver still holds the delivery (inline, it would hang
    # until the release, past the client's timeout).
    _HeldReceiver.release.clear()
    _HeldReceiver.arrived.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeldReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    callback = f"http://127.0.0.1:{server.server_address[1]}/slow"
    try:
        with httpx.Client(base_url=service_stack.api_url, headers=service_stack.client().headers, timeout=20) as c:
            r = c.post(
                "/v1/jobs",
                files=[("files", ("broken.zip", b"PK\x03\x04garbage", "application/zip"))],
                data={"callback_url": callback},
            )
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "failed"
            assert _HeldReceiver.arrived.wait(60), "the webhook never reached the receiver"
            assert c.get(f"/v1/jobs/{job_id}").json()["callback_status"] == "pending"
            _HeldReceiver.release.set()
            done = wait_until(
                lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["callback_status"] != "pending" and j, 60, "outcome"
            )
        assert done["callback_status"] == "HTTP 204"
    finally:
        _HeldReceiver.release.set()
        server.shutdown()


def test_no_secret_reaches_the_logs(service_stack: ServiceStack) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Callbacks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with service_stack.client() as c:
            secrets_seen = [c.get("/v1/webhook-secret").json()["secret"]]
            secrets_seen.append(c.post("/v1/webhook-secret/rotate").json()["secret"])
            callback = f"http://127.0.0.1:{server.server_address[1]}/done"
            r = c.post(
                "/v1/jobs", files=[("files", ("1.png", png_bytes(8), "image/png"))], data={"callback_url": callback}
            )
            service_stack.wait_job(r.json()["id"])
            c.get(
                f"/v1/jobs/{r.json()['id']}/results"
            ).raise_for_status()  # presigned URLs are signed with the S3 secret
            c.get("/v1/jobs", headers={"X-API-Key": "fks_wrong-key-that-must-not-be-logged"})
    finally:
        server.shutdown()
    logs = "\n".join(f.read_text(errors="replace") for f in service_stack.stack.log_dir.glob("*.log"))
    assert r.json()["id"] in logs  # the logs are there to search, whole
    for secret in [*service_stack.keys.values(), *secrets_seen, "fakescope-test-s3-secret-7f3a91"]:
        assert secret not in logs
    assert "fks_wrong-key-that-must-not-be-logged" not in logs


def test_a_verdicts_only_job_has_no_overlays(service_stack: ServiceStack) -> None:
    files = [("files", (f"{i}.png", png_bytes(9700 + i), "image/png")) for i in range(3)]
    with service_stack.client() as c:
        r = c.post("/v1/jobs", files=files, data={"overlays": "false"})
        assert r.status_code == 202, r.text
        assert r.json()["overlays"] is False
        job = service_stack.wait_job(r.json()["id"])
        results = c.get(f"/v1/jobs/{job['id']}/results").json()["data"]
    assert job["state"] == "succeeded"
    assert [x["overlay_url"] for x in results] == [None] * 3
    assert all(x["prediction"] in ("real", "fake") and x["image_url"] for x in results)
