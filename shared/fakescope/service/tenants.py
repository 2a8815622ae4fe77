"""Tenants and their API keys; keys are shown once and stored as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from sqlmodel import Session, col, select

from fakescope.db.models import ApiKey, Tenant, utcnow
from fakescope.result import OperatingPoint

__all__ = [
    "authenticate",
    "create_api_key",
    "ensure_api_key",
    "hash_key",
    "list_api_keys",
    "make_report_token",
    "operating_point",
    "report_token_job",
    "revoke_api_key",
    "set_operating_point",
    "verify_report_token",
]

KEY_PREFIX = "fks_"
REPORT_PREFIX = "fkr_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _tenant(session: Session, name: str) -> Tenant:
    tenant = session.exec(select(Tenant).where(Tenant.name == name)).first()
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(session: Session, *, tenant_name: str) -> tuple[Tenant, str]:
    """A new key for ``tenant_name`` (created if missing); returns the tenant and the plain key."""
    tenant = _tenant(session, tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:12]))
    session.commit()
    session.refresh(tenant)
    return tenant, key


def ensure_api_key(session: Session, *, tenant_name: str, key: str) -> Tenant:
    """Registers a given key (e.g. ``FAKESCOPE_BOOTSTRAP_API_KEY``) for ``tenant_name`` unless it exists."""
    existing = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first()
    if existing is not None:
        tenant = session.get(Tenant, existing.tenant_id)
        assert tenant is not None
        return tenant
    tenant = _tenant(session, tenant_name)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:12]))
    session.commit()
    session.refresh(tenant)
    return tenant


def authenticate(session: Session, *, key: str) -> uuid.UUID | None:
    """The tenant id of a valid, unrevoked ``key``, else None.

    Keys are found by their public prefix (the first 12 characters, which identify a key without
    granting anything), and the candidates' hashes compared with :func:`hmac.compare_digest`, so
    the time a wrong key takes says nothing about how close it came.
    """
    digest = hash_key(key)
    candidates = session.exec(
        select(ApiKey).where(ApiKey.prefix == key[:12], ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
    ).all()
    for row in candidates:
        if hmac.compare_digest(row.key_hash, digest):
            return row.tenant_id
    return None


def list_api_keys(session: Session, *, tenant_name: str | None = None) -> list[tuple[str, ApiKey]]:
    """Every key (revoked ones too) as ``(tenant name, key row)``: prefixes and dates, never the key."""
    stmt = select(Tenant.name, ApiKey).join(Tenant, col(Tenant.id) == col(ApiKey.tenant_id))
    if tenant_name is not None:
        stmt = stmt.where(Tenant.name == tenant_name)
    return [(name, key) for name, key in session.exec(stmt.order_by(col(ApiKey.created_at))).all()]


def revoke_api_key(session: Session, *, prefix: str) -> int:
    """Revokes the unrevoked keys whose public prefix is ``prefix`` (as ``list_api_keys`` shows it)."""
    rows = session.exec(select(ApiKey).where(ApiKey.prefix == prefix, col(ApiKey.revoked_at).is_(None))).all()
    for row in rows:
        row.revoked_at = utcnow()
        session.add(row)
    session.commit()
    return len(rows)


# Report links: a read-only capability for one job, not a tenant key. ``fkr_<job>.<expiry>.<mac>``,
# the MAC an HMAC-SHA256 under the service's secret key over the job, its tenant and the expiry, so
# the token opens nothing but that job's GET routes until it expires (rotating
# FAKESCOPE_SECRET_KEY revokes every token at once).


def _report_mac(secret: str, job_id: uuid.UUID, tenant_id: uuid.UUID, expires: int) -> str:
    msg = f"report:{job_id}:{tenant_id}:{expires}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def make_report_token(secret: str, *, job_id: uuid.UUID, tenant_id: uuid.UUID, expires: int) -> str:
    """A token that reads job ``job_id`` until ``expires`` (unix seconds)."""
    return f"{REPORT_PREFIX}{job_id.hex}.{expires}.{_report_mac(secret, job_id, tenant_id, expires)}"


def report_token_job(token: str) -> uuid.UUID | None:
    """The job a well-formed report token names (not yet verified), else None."""
    if not token.startswith(REPORT_PREFIX):
        return None
    try:
        job_hex, _expires, _mac = token[len(REPORT_PREFIX) :].split(".")
        return uuid.UUID(hex=job_hex)
    except ValueError:
        return None


def verify_report_token(secret: str, token: str, *, tenant_id: uuid.UUID, now: float) -> bool:
    """Whether ``token`` is a valid, unexpired report token for its job, whose tenant is ``tenant_id``."""
    job_id = report_token_job(token)
    if job_id is None:
        return False
    _job, expires_s, mac = token[len(REPORT_PREFIX) :].split(".")
    try:
        expires = int(expires_s)
    except ValueError:
        return False
    # Bytes, not str: compare_digest refuses a str with non-ASCII characters (TypeError, a 500), and a
    # header can carry any Latin-1 character.
    expected = _report_mac(secret, job_id, tenant_id, expires).encode()
    return expires > now and hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), expected)


def operating_point(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    fake_threshold: float | None = None,
    real_threshold: float | None = None,
) -> OperatingPoint:
    """The operating point a request scores at: the thresholds it gives (a request that gives either
    gives the whole point: an unset fake threshold is 0.5, an unset real one means no band), else the
    tenant's default, else 0.5 without a band.

    Raises:
        pydantic.ValidationError: a threshold outside (0, 1], or the real one above the fake one.
    """
    if fake_threshold is not None or real_threshold is not None:
        return OperatingPoint(
            fake_threshold=0.5 if fake_threshold is None else fake_threshold, real_threshold=real_threshold
        )
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or tenant.fake_threshold is None:
        return OperatingPoint()
    return OperatingPoint(fake_threshold=tenant.fake_threshold, real_threshold=tenant.real_threshold)


def set_operating_point(session: Session, *, tenant_id: uuid.UUID, point: OperatingPoint) -> OperatingPoint:
    """Makes ``point`` the tenant's default for the jobs and checks it creates from now on."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise LookupError(f"no tenant {tenant_id}")
    tenant.fake_threshold = point.fake_threshold
    tenant.real_threshold = point.real_threshold
    session.add(tenant)
    session.commit()
    return point
