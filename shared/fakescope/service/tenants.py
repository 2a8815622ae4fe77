"""Tenants and their API keys; keys are shown once and stored as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from sqlmodel import Session, select

from fakescope.db.models import ApiKey, Tenant

__all__ = ["authenticate", "create_api_key", "ensure_api_key", "hash_key"]

KEY_PREFIX = "fks_"


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
