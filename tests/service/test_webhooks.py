"""Webhook destinations, signatures and delivery: the outbox, pinned addresses, bounded responses."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select
from standardwebhooks.webhooks import Webhook as StandardWebhook

from fakescope.db.models import ItemStatus, Job, JobItem, WebhookDelivery, utcnow
from fakescope.service import jobs as svc
from fakescope.service.sweeper import SweepReport, sweep
from fakescope.service.tenants import create_api_key
from fakescope.service.webhooks import (
    PENDING,
    Attempt,
    CallbackURLError,
    attempt_delivery,
    check_callback_url,
    delivery_id,
    post_pinned,
    resolve_callback,
    sign,
    standard_secret,
    standard_signature,
    verify_signature,
    verify_standard_signature,
)
from fakescope.settings import Settings
from tests.utils.slow_http import trickle
from tests.utils.stack import ServiceEnv


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "ftp://93.184.216.34/",
        "http://user:pw@93.184.216.34/",
        "http:///nohost",
        # Found by the hardening probes: shared address space (a cloud metadata address), 6to4
        # loopback, IPv4-mapped loopback, a port out of range, a label over 63 characters, an
        # unusual port on a public host.
        "http://100.100.100.200/latest/meta-data",
        "http://[2002:7f00:1::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://example.com:99999/",
        "http://" + "a" * 64 + ".example.com/",
        "http://93.184.216.34:6379/",
        "http://198.51.100.7/",
    ],
)
def test_refused_destinations(url: str) -> None:
    with pytest.raises(CallbackURLError):
        check_callback_url(url)


def test_public_and_explicitly_allowed_destinations() -> None:
    assert check_callback_url("https://93.184.216.34/hook") == "https://93.184.216.34/hook"
    assert check_callback_url("http://10.1.2.3:8080/h", ["10.0.0.0/8"]) == "http://10.1.2.3:8080/h"
    assert check_callback_url("https://93.184.216.34:443/hook") == "https://93.184.216.34:443/hook"
    assert check_callback_url("http://93.184.216.34:8443/h", allowed_ports=[8443]) == "http://93.184.216.34:8443/h"
    with pytest.raises(CallbackURLError):
        check_callback_url("http://10.1.2.3/h", ["192.168.0.0/16"])


def test_signature_binds_secret_body_and_time() -> None:
    body = b'{"job_id":"x","state":"succeeded"}'
    header = sign("s3cret", body)
    assert verify_signature("s3cret", body, header)
    assert not verify_signature("other", body, header)
    assert not verify_signature("s3cret", body + b" ", header)
    assert not verify_signature("s3cret", body, sign("s3cret", body, timestamp=int(time.time()) - 3600))
    assert not verify_signature("s3cret", body, "garbage")


# Delivery: the outbox, pinned addresses, bounded responses, Standard Webhooks signatures.


class _Receiver(BaseHTTPRequestHandler):
    """Records each POST; answers with ``codes`` in turn (then 204), or streams forever when asked."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    codes: ClassVar[list[int]] = []
    endless: ClassVar[bool] = False
    trickle: ClassVar[bool] = False

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((dict(self.headers), body))
        code = _Receiver.codes.pop(0) if _Receiver.codes else 204
        self.send_response(200 if _Receiver.endless or _Receiver.trickle else code)
        if _Receiver.trickle:  # a byte every 0.2 s: each read is quick, the body never ends
            self.end_headers()
            trickle(self.wfile)
            return
        if _Receiver.endless:
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            chunk = b"x" * 65536
            with contextlib.suppress(OSError):  # fakescope hangs up once it has read its limit
                for _ in range(100_000):  # 6.5 GB: far more than anyone may buffer
                    self.wfile.write(chunk)
            return
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[int]:
    _Receiver.received, _Receiver.codes, _Receiver.endless, _Receiver.trickle = [], [], False, False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """getaddrinfo answering ``answers[name]`` one lookup at a time (the last one repeats)."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(
        host: bytes | str | None, port: bytes | str | int | None, *args: int, **kwargs: int
    ) -> list[tuple[Any, ...]]:
        if not isinstance(host, str) or host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        ip = answers[host].pop(0) if len(answers[host]) > 1 else answers[host][0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_delivery_connects_to_the_address_it_checked(monkeypatch: pytest.MonkeyPatch, receiver: int) -> None:
    # DNS rebinding: the name passes the check as loopback (allowed here), then answers a metadata
    # address. The POST must go where the check looked, with the URL's host in the Host header.
    asked = _fake_dns(monkeypatch, {"hooks.example": ["127.0.0.1", "169.254.169.254"]})
    target = resolve_callback(f"http://hooks.example:{receiver}/in?x=1", ["127.0.0.1/32"])
    assert target.addresses == (ipaddress.ip_address("127.0.0.1"),)
    code = post_pinned(target, b"{}", {"Content-Type": "application/json"}, timeout_s=5, max_response_bytes=1024)
    assert code == 204
    assert asked == ["hooks.example"]
    headers, body = _Receiver.received[0]
    assert headers["Host"] == f"hooks.example:{receiver}" and body == b"{}"
    with pytest.raises(CallbackURLError, match="non-public"):
        resolve_callback(f"http://hooks.example:{receiver}/in", ["127.0.0.1/32"])


def test_an_endless_response_is_read_to_the_limit_and_dropped(receiver: int) -> None:
    _Receiver.endless = True
    target = resolve_callback(f"http://127.0.0.1:{receiver}/", ["127.0.0.1/32"])
    assert post_pinned(target, b"{}", {}, timeout_s=5, max_response_bytes=256 * 1024) == 200


def test_a_trickling_response_is_dropped_at_the_deadline(receiver: int) -> None:
    # Every read returns within the read timeout, so only a deadline on the whole body ends it: the
    # attempt then has its outcome (the status line's) well inside the task's time limit.
    _Receiver.trickle = True
    target = resolve_callback(f"http://127.0.0.1:{receiver}/", ["127.0.0.1/32"])
    t0 = time.monotonic()
    assert post_pinned(target, b"{}", {}, timeout_s=1, max_response_bytes=64 * 1024) == 200
    assert time.monotonic() - t0 < 30  # the body alone would take 600 s


def test_standard_webhooks_signature_is_the_documented_hmac() -> None:
    secret, msg_id, t, body = "s3cret", "msg_1", int(time.time()), b'{"a":1}'
    sig = standard_signature(secret, msg_id, t, body)
    mac = hmac.new(secret.encode(), f"{msg_id}.{t}.".encode() + body, hashlib.sha256).digest()
    assert sig == "v1," + base64.b64encode(mac).decode()
    # A Standard Webhooks library derives the key by base64-decoding what follows whsec_.
    assert base64.b64decode(standard_secret(secret).removeprefix("whsec_")) == secret.encode()
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(t), "webhook-signature": f"v1,bogus= {sig}"}
    assert verify_standard_signature(secret, body, headers)
    assert not verify_standard_signature(secret, body + b" ", headers)
    assert not verify_standard_signature("other", body, headers)
    assert not verify_standard_signature(secret, body, {**headers, "webhook-timestamp": str(t - 3600)})
    assert not verify_standard_signature(secret, body, {"webhook-id": msg_id})


def _finished_job(session: Session, tenant_id: uuid.UUID, url: str) -> Job:
    job = Job(tenant_id=tenant_id, callback_url=url, total=1)
    session.add(job)
    session.add(
        JobItem(job_id=job.id, position=0, name="a.png", object_key="x", status=ItemStatus.DONE, prediction="real")
    )
    session.commit()
    done = svc.finalize_if_done(session, job_id=job.id)
    assert done is not None
    return done


def _delivery(settings: Settings, **changes: object) -> Settings:
    """``settings`` with its webhook group changed (model_copy does not validate: a flat key would be ignored)."""
    return settings.model_copy(update={"callback": settings.callback.model_copy(update=changes)})


def test_the_outbox_delivers_retries_and_records_each_attempt(service_env: ServiceEnv, receiver: int) -> None:
    settings = _delivery(service_env.settings, attempts=3, backoff_s=0.5)
    with service_env.session() as session:
        tenant, _ = create_api_key(session, tenant_name=f"hooks-{uuid.uuid4().hex[:6]}")
        job = _finished_job(session, tenant.id, f"http://127.0.0.1:{receiver}/done")
        # Finishing put the webhook in the outbox in the same statement; nothing was sent yet.
        assert (job.callback_status, job.callback_sent_at is not None) == (PENDING, True)
        assert _Receiver.received == []
        _Receiver.codes = [503, 429]
        first = attempt_delivery(session, job_id=job.id, settings=settings)
        second = attempt_delivery(session, job_id=job.id, settings=settings)
        third = attempt_delivery(session, job_id=job.id, settings=settings)
        assert first is not None and second is not None and third is not None
        assert [a.outcome for a in (first, second, third)] == ["HTTP 503", "HTTP 429", "HTTP 204"]
        # Exponential backoff from 0.5 s with up to 25% jitter; the last attempt ends it.
        assert first.retry_in is not None and 0.5 <= first.retry_in <= 0.625
        assert second.retry_in is not None and 1.0 <= second.retry_in <= 1.25 and third.retry_in is None
        assert attempt_delivery(session, job_id=job.id, settings=settings) is None  # delivered: nothing pending
        session.refresh(job)
        assert job.callback_status == "HTTP 204"
        log = session.exec(select(WebhookDelivery).where(WebhookDelivery.job_id == job.id)).all()
        assert sorted((d.attempt, d.status_code) for d in log) == [(1, 503), (2, 429), (3, 204)]
        secret = tenant.webhook_secret
    # Every attempt carries the same id, both signatures, and a body the receiver can verify.
    ids = {h["webhook-id"] for h, _ in _Receiver.received}
    assert ids == {str(delivery_id(job.id))} and len(_Receiver.received) == 3
    for headers, body in _Receiver.received:
        assert verify_standard_signature(secret, body, headers)
        # ... and with the Standard Webhooks reference library, given the secret as the API shows it.
        assert StandardWebhook(standard_secret(secret)).verify(body, headers) == json.loads(body)
        assert verify_signature(secret, body, headers["X-Fakescope-Signature"])
        assert json.loads(body)["state"] == "succeeded" and json.loads(body)["type"] == "job.finished"


def test_the_attempt_budget_ends_in_the_last_outcome(service_env: ServiceEnv, receiver: int) -> None:
    settings = _delivery(service_env.settings, attempts=2)
    with service_env.session() as session:
        tenant, _ = create_api_key(session, tenant_name=f"hooks-{uuid.uuid4().hex[:6]}")
        job = _finished_job(session, tenant.id, f"http://127.0.0.1:{receiver}/done")
        _Receiver.codes = [500, 502]
        first = attempt_delivery(session, job_id=job.id, settings=settings)
        assert first is not None and first.outcome == "HTTP 500" and first.retry_in is not None
        assert attempt_delivery(session, job_id=job.id, settings=settings) == Attempt("HTTP 502", None)
        session.refresh(job)
        assert job.callback_status == "HTTP 502"
        # A destination refused at delivery time (here: its network is no longer allowed) is final at once.
        other = _finished_job(session, tenant.id, f"http://127.0.0.1:{receiver}/done")
        strict = _delivery(settings, allowed_networks=[])
        outcome = attempt_delivery(session, job_id=other.id, settings=strict)
        assert outcome is not None and outcome.retry_in is None and outcome.outcome.startswith("refused: ")


def _sweep_webhooks(session: Session, sent: list[uuid.UUID]) -> SweepReport:
    """A sweep with nothing to re-enqueue: only webhooks left pending are re-sent, into ``sent``."""
    return sweep(
        session,
        enqueue_classify=lambda *_: 0,
        enqueue_explain=lambda *_: 0,
        deadline_s=3600,
        enqueue_webhook=sent.append,
        redeliver_after_s=300,
    )


def test_the_sweeper_resends_webhooks_left_pending(service_env: ServiceEnv) -> None:
    with service_env.session() as session:
        tenant, _ = create_api_key(session, tenant_name=f"hooks-{uuid.uuid4().hex[:6]}")
        stuck = _finished_job(session, tenant.id, "http://127.0.0.1:9/never")
        fresh = _finished_job(session, tenant.id, "http://127.0.0.1:9/never")
        session.exec(
            update(Job).where(col(Job.id) == stuck.id).values(callback_sent_at=utcnow() - timedelta(seconds=600))
        )
        session.commit()
        sent: list[uuid.UUID] = []
        rep = _sweep_webhooks(session, sent)
        assert stuck.id in sent and fresh.id not in sent and rep.webhooks == len(sent)
        # Claimed: the next round leaves it alone until it is overdue again.
        again: list[uuid.UUID] = []
        _sweep_webhooks(session, again)
        assert stuck.id not in again


def test_re_sends_are_logged_and_capped(service_env: ServiceEnv) -> None:
    # A delivery whose task never records an outcome (killed at its time limit every time) was re-sent
    # every interval, forever, with no delivery row. Each re-send is now a row, and they stop.
    from fakescope.service.sweeper import MAX_RESENDS, RESENT

    with service_env.session() as session:
        tenant, _ = create_api_key(session, tenant_name=f"hooks-{uuid.uuid4().hex[:6]}")
        stuck = _finished_job(session, tenant.id, "http://127.0.0.1:9/never")
        sent: list[uuid.UUID] = []
        for _ in range(MAX_RESENDS + 2):
            session.exec(
                update(Job).where(col(Job.id) == stuck.id).values(callback_sent_at=utcnow() - timedelta(seconds=600))
            )
            session.commit()
            _sweep_webhooks(session, sent)
        assert sent.count(stuck.id) == MAX_RESENDS
        rows = session.exec(select(WebhookDelivery).where(WebhookDelivery.job_id == stuck.id)).all()
        assert [r.outcome for r in rows] == [RESENT] * MAX_RESENDS
        session.refresh(stuck)
        assert stuck.callback_status == f"error: gave up after {MAX_RESENDS} re-sends that recorded no outcome"
