"""The tenant's webhook signing secret: read it to verify deliveries, rotate it when it leaks."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel

from api.deps import SessionDep, TenantDep
from fakescope.db.models import Tenant

router = APIRouter(prefix="/webhook-secret", tags=["webhooks"])


class WebhookSecret(BaseModel):
    secret: str
    algorithm: str = "HMAC-SHA256 over '<t>.' + body; header X-Fakescope-Signature: t=<t>,v1=<hex>"


def _tenant(session: SessionDep, tenant_id: TenantDep) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Tenant not found")
    return tenant


@router.get("", response_model=WebhookSecret)
def get_secret(session: SessionDep, tenant_id: TenantDep) -> WebhookSecret:
    return WebhookSecret(secret=_tenant(session, tenant_id).webhook_secret)


@router.post("/rotate", response_model=WebhookSecret)
def rotate_secret(session: SessionDep, tenant_id: TenantDep) -> WebhookSecret:
    """A new secret; deliveries from now on are signed with it."""
    tenant = _tenant(session, tenant_id)
    tenant.webhook_secret = secrets.token_hex(32)
    session.add(tenant)
    session.commit()
    return WebhookSecret(secret=tenant.webhook_secret)
