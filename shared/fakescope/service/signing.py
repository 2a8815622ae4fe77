"""Webhook signatures: our own ``X-Fakescope-Signature`` (HMAC-SHA256 over timestamp and body) and the
Standard Webhooks scheme (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), so a receiver
verifies a delivery with an off-the-shelf library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = ["sign", "standard_secret", "standard_signature", "verify_signature", "verify_standard_signature"]


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


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>``."""
    mac = hmac.new(secret.encode(), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def standard_secret(secret: str) -> str:
    """The tenant secret as the Standard Webhooks libraries take it: ``whsec_`` + base64 of its bytes."""
    return "whsec_" + base64.b64encode(secret.encode()).decode()


def verify_standard_signature(secret: str, body: bytes, headers: Mapping[str, str], tolerance_s: int = 300) -> bool:
    """Whether Standard Webhooks ``headers`` sign ``body`` with ``secret`` and are fresh (receivers use this)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, t = lower["webhook-id"], int(lower["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    expected = standard_signature(secret, msg_id, t, body)
    return any(hmac.compare_digest(expected, sig) for sig in lower.get("webhook-signature", "").split())
