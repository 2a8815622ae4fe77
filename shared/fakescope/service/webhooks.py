"""Job-completion webhooks: an outbox, a pool of their own, pinned destinations, two signatures.

Delivery never runs on a request or a classify worker. The statement that finishes (or cancels) a job
also marks its webhook ``pending`` (:mod:`fakescope.service.outbox`: the state change and the promise
to tell the receiver commit together); the process that finished it then asks the ``webhooks`` queue
to deliver it, and the sweeper re-sends any still pending after ``callback_redeliver_after_s``
(a lost message, a broker outage). A webhooks worker makes one attempt per task: connect, send and
read are each bounded by ``callback_timeout_s``, the response body is read to at most
``callback_max_response_bytes`` and dropped, and a retry is a new task after a backoff, not a sleep.

Each tenant has a secret (``GET /v1/webhook-secret``). A delivery is a POST of a JSON body with

- Standard Webhooks headers (standardwebhooks.com): ``webhook-id`` (the same on every attempt and
  re-send of a job's webhook, for deduplication), ``webhook-timestamp`` and
  ``webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>." + body)>``, where the key is
  the secret's bytes (``standard_secret`` in the API gives it as ``whsec_<base64>`` for the
  Standard Webhooks libraries);
- the older ``X-Fakescope-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
  with ``X-Fakescope-Event`` and ``X-Fakescope-Delivery``.

Destinations must be http(s) and, unless their network is listed in ``FAKESCOPE_CALLBACK_ALLOWED_NETWORKS``,
must not be loopback, private, link-local (cloud metadata), multicast or reserved addresses: checked when
a job is submitted and again, after DNS, at every attempt; the attempt then connects to the address it
checked (the Host header and TLS name stay the URL's), so a second DNS answer cannot redirect it (DNS
rebinding). Every attempt is logged in ``webhook_deliveries`` and listed by ``GET /v1/jobs/{id}/deliveries``.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from fakescope.db.models import Job, Tenant, WebhookDelivery
from fakescope.outbound import DEFAULT_PORTS, OutboundURLError, Target, pinned_url, resolve_target
from fakescope.service.jobs import job_counts

# The outbox's names, re-exported: receivers' docs and tests import them from here.
from fakescope.service.outbox import EVENT as EVENT
from fakescope.service.outbox import PENDING as PENDING
from fakescope.service.outbox import delivery_id as delivery_id

# Signing lives in fakescope.service.signing; re-exported, as receivers and tests import it from here.
from fakescope.service.signing import sign as sign
from fakescope.service.signing import standard_secret as standard_secret
from fakescope.service.signing import standard_signature as standard_signature
from fakescope.service.signing import verify_signature as verify_signature
from fakescope.service.signing import verify_standard_signature as verify_standard_signature
from fakescope.settings import Settings

__all__ = [
    "PENDING",
    "Attempt",
    "CallbackURLError",
    "Target",
    "attempt_delivery",
    "check_callback_url",
    "delivery_id",
    "post_pinned",
    "resolve_callback",
    "sign",
    "standard_secret",
    "standard_signature",
    "verify_signature",
    "verify_standard_signature",
]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Fakescope-Signature"


class CallbackURLError(OutboundURLError):
    """The callback URL is not one fakescope will call."""


def resolve_callback(
    url: str, allowed_networks: Sequence[str] = (), resolve: bool = True, allowed_ports: Sequence[int] = DEFAULT_PORTS
) -> Target:
    """The :class:`Target` of ``url`` if fakescope may POST to it, else :class:`CallbackURLError` saying
    why (the outbound guard, :func:`fakescope.outbound.resolve_target`)."""
    return resolve_target(url, allowed_networks, resolve, allowed_ports, what="callback_url", error=CallbackURLError)


def check_callback_url(
    url: str, allowed_networks: Sequence[str] = (), resolve: bool = True, allowed_ports: Sequence[int] = DEFAULT_PORTS
) -> str:
    """``url`` if fakescope may POST to it (see :func:`resolve_callback`), else :class:`CallbackURLError`."""
    resolve_callback(url, allowed_networks, resolve=resolve, allowed_ports=allowed_ports)
    return url


def post_pinned(
    target: Target, body: bytes, headers: Mapping[str, str], *, timeout_s: float, max_response_bytes: int
) -> int:
    """POSTs ``body`` to the first checked address of ``target`` and returns the status code.

    The URL's host is kept in the Host header and as the TLS server name (certificates are verified
    against it), but the socket goes to the address that was checked. No redirects, no proxies from
    the environment; at most ``max_response_bytes`` of the response body are read, for at most
    ``timeout_s`` after the status line: the status decides the outcome, and a receiver that
    trickles its body must not hold the task past its time limit (where no outcome is recorded and
    the sweeper sends again, forever).
    """
    if not target.addresses:
        raise CallbackURLError("callback_url host was not resolved")
    url, pinned, extensions = pinned_url(target)
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        request = client.build_request("POST", url, content=body, headers={**headers, **pinned}, extensions=extensions)
        response = client.send(request, stream=True)
        deadline = time.monotonic() + timeout_s
        try:
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read >= max_response_bytes or time.monotonic() > deadline:
                    break
        finally:
            response.close()
        return response.status_code


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt's outcome, and seconds until the next attempt (None: no more)."""

    outcome: str
    retry_in: float | None


def attempt_delivery(session: Session, *, job_id: uuid.UUID, settings: Settings) -> Attempt | None:
    """One attempt at delivering the job's pending webhook, logged; None when nothing is pending.

    The attempt number is counted from the delivery log, so re-sent and retried tasks share the budget
    of ``callback_attempts``. The last attempt (a 2xx-4xx other than 429, a refused destination, or
    the budget spent) writes its outcome to ``jobs.callback_status``, conditional on it still being
    pending, so a concurrent second task cannot overwrite it.
    """
    job = session.get(Job, job_id)
    if job is None or not job.callback_url or job.callback_status != PENDING:
        return None
    attempt = 1 + session.exec(select(func.count()).where(col(WebhookDelivery.job_id) == job.id)).one()
    did = str(delivery_id(job.id))
    body, headers = _signed_event(session, job, did)
    t0 = time.perf_counter()
    code, status, refused = _post(job.callback_url, body, headers, settings)
    session.add(
        WebhookDelivery(
            delivery_id=uuid.UUID(did),
            job_id=job.id,
            tenant_id=job.tenant_id,
            url=job.callback_url,
            event=EVENT,
            attempt=attempt,
            status_code=code,
            outcome=status[:255],
            duration_ms=(time.perf_counter() - t0) * 1000.0,
        )
    )
    session.commit()
    retryable = not refused and (code is None or code >= 500 or code == 429)
    if retryable and attempt < settings.callback.attempts:
        logger.warning("webhook for job %s, attempt %s of %s: %s", job.id, attempt, settings.callback.attempts, status)
        # Exponential backoff with up to 25% jitter, so receivers coming back are not hit in lockstep.
        return Attempt(status, settings.callback.backoff_s * 2 ** (attempt - 1) * (1 + 0.25 * random.random()))
    session.exec(
        update(Job)
        .where(col(Job.id) == job.id, col(Job.callback_status) == PENDING)
        .values(callback_status=status[:255])
    )
    session.commit()
    return Attempt(status, None)


def _signed_event(session: Session, job: Job, did: str) -> tuple[bytes, dict[str, str]]:
    """The job's event as sent: its JSON body and headers, signed with the tenant's secret both ways
    (Standard Webhooks' ``webhook-signature`` and fakescope's own header)."""
    tenant = session.get(Tenant, job.tenant_id)
    secret = tenant.webhook_secret if tenant is not None else ""
    payload: dict[str, Any] = {
        "type": EVENT,
        "job_id": str(job.id),
        "state": job.state,
        "counts": job_counts(session, job_id=job.id).model_dump(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    now = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "fakescope-webhooks/2",
        "webhook-id": did,
        "webhook-timestamp": str(now),
        "webhook-signature": standard_signature(secret, did, now, body),
        "X-Fakescope-Event": EVENT,
        "X-Fakescope-Delivery": did,
        SIGNATURE_HEADER: sign(secret, body, now),
    }
    return body, headers


def _post(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> tuple[int | None, str, bool]:
    """POSTs to the callback's resolved, allowed address: (HTTP status, outcome, refused)."""
    try:
        target = resolve_callback(
            url, settings.callback.allowed_networks, allowed_ports=settings.callback.allowed_ports
        )
        code = post_pinned(
            target,
            body,
            headers,
            timeout_s=settings.callback.timeout_s,
            max_response_bytes=settings.callback.max_response_bytes,
        )
        return code, f"HTTP {code}", False
    except CallbackURLError as e:
        return None, f"refused: {e}", True
    except httpx.HTTPError as e:
        return None, f"error: {type(e).__name__}: {e}", False
