"""Job-completion webhooks: restricted destinations, HMAC-SHA256 signatures, retries, a delivery log.

Each tenant has a secret (``GET /v1/webhook-secret``). A delivery is a POST of a JSON body with

- ``X-Fakescope-Event: job.finished`` and ``X-Fakescope-Delivery: <uuid>`` (the same on every retry);
- ``X-Fakescope-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.

A receiver recomputes the HMAC over the timestamp and the raw body with :func:`verify_signature` and
rejects old timestamps, which stops replays. Destinations must be http(s) and, unless their network is
listed in ``FAKESCOPE_CALLBACK_ALLOWED_NETWORKS``, must not be loopback, private, link-local (cloud
metadata), multicast or reserved addresses: checked when a job is submitted and again, after DNS,
when it is delivered. Every attempt is logged in ``webhook_deliveries`` and listed by
``GET /v1/jobs/{id}/deliveries``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlmodel import Session

from fakescope.db.models import Job, Tenant, WebhookDelivery

__all__ = ["CallbackURLError", "check_callback_url", "deliver", "sign", "verify_signature"]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Fakescope-Signature"


class CallbackURLError(ValueError):
    """The callback URL is not one fakescope will call."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_networks(allowed: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(n.strip(), strict=False) for n in allowed if n.strip()]


def _embedded_v4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    # IPv6 forms that carry an IPv4 destination: ::ffff:127.0.0.1, 6to4 (2002:7f00:1::1 is
    # 127.0.0.1) and Teredo. The carried address decides where the packet really goes.
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    out = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        out.extend(ip.teredo)
    return out


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable (``is_global``: not loopback, private, link-local, shared 100.64.0.0/10,
    documentation, benchmarking or reserved), and so is any IPv4 address it carries."""
    return ip.is_global and not ip.is_multicast and all(_public(v4) for v4 in _embedded_v4(ip))


DEFAULT_PORTS = (80, 443)


def check_callback_url(
    url: str, allowed_networks: Sequence[str] = (), resolve: bool = True, allowed_ports: Sequence[int] = DEFAULT_PORTS
) -> str:
    """``url`` if fakescope may POST to it, else :class:`CallbackURLError` saying why.

    Every address the host resolves to must be globally routable or inside ``allowed_networks``;
    the port must be one of ``allowed_ports`` unless every address is inside ``allowed_networks``
    (an operator who allows an internal receiver decides its port too).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise CallbackURLError(f"callback_url is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise CallbackURLError("callback_url must be an http or https URL")
    if not parts.hostname:
        raise CallbackURLError("callback_url has no host")
    if parts.username or parts.password:
        raise CallbackURLError("callback_url must not carry credentials")
    host = parts.hostname
    if len(host) > 253 or any(not 0 < len(label) <= 63 for label in host.rstrip(".").split(".")):
        raise CallbackURLError("callback_url host is not a valid name")
    networks = _parse_networks(allowed_networks)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if not resolve:
            return url
        try:
            infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80))
        except (socket.gaierror, UnicodeError) as e:
            raise CallbackURLError(f"callback_url host does not resolve: {host}") from e
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    inside = [any(ip in n for n in networks) for ip in addresses]
    for ip, ok in zip(addresses, inside, strict=True):
        if not ok and not _public(ip):
            raise CallbackURLError(f"callback_url points at a non-public address ({ip}); not allowed")
    if port is not None and port not in allowed_ports and not all(inside):
        allowed = ", ".join(str(p) for p in allowed_ports)
        raise CallbackURLError(f"callback_url port {port} is not allowed (allowed: {allowed})")
    return url


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(secret: str, body: bytes, header: str, tolerance_s: int = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` and is at most ``tolerance_s`` old (receivers use this)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def deliver(
    session: Session,
    *,
    job: Job,
    payload: dict[str, Any],
    allowed_networks: Sequence[str] = (),
    allowed_ports: Sequence[int] = DEFAULT_PORTS,
    timeout_s: float = 10.0,
    attempts: int = 3,
    backoff_s: float = 1.0,
) -> str:
    """POSTs ``payload`` to the job's callback URL, signed, retrying network errors and 5xx with backoff.

    Returns the outcome (``HTTP 204``, ``error: ...``), also kept in ``jobs.callback_status``.
    """
    assert job.callback_url
    tenant = session.get(Tenant, job.tenant_id)
    secret = tenant.webhook_secret if tenant is not None else ""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    delivery_id = uuid.uuid4()
    status = "not sent"
    for attempt in range(1, attempts + 1):
        t0 = time.perf_counter()
        code: int | None = None
        try:
            # Again: DNS may have changed since the job was submitted.
            check_callback_url(job.callback_url, allowed_networks, allowed_ports=allowed_ports)
            resp = httpx.post(
                job.callback_url,
                content=body,
                timeout=timeout_s,
                follow_redirects=False,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "fakescope-webhooks/1",
                    "X-Fakescope-Event": "job.finished",
                    "X-Fakescope-Delivery": str(delivery_id),
                    SIGNATURE_HEADER: sign(secret, body),
                },
            )
            code = resp.status_code
            status = f"HTTP {code}"
        except CallbackURLError as e:
            status = f"refused: {e}"
        except httpx.HTTPError as e:
            status = f"error: {type(e).__name__}: {e}"
        session.add(
            WebhookDelivery(
                delivery_id=delivery_id,
                job_id=job.id,
                tenant_id=job.tenant_id,
                url=job.callback_url,
                event="job.finished",
                attempt=attempt,
                status_code=code,
                outcome=status[:255],
                duration_ms=(time.perf_counter() - t0) * 1000.0,
            )
        )
        session.commit()
        if (code is not None and code < 500) or status.startswith("refused"):
            break
        logger.warning("webhook for job %s, attempt %s of %s: %s", job.id, attempt, attempts, status)
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    job.callback_status = status[:255]
    session.add(job)
    session.commit()
    return status
