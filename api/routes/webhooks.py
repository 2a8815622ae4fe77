"""The tenant's webhook signing secret: read it to verify deliveries, rotate it when it leaks."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from api.deps import SessionDep, TenantDep
from fakescope.db.models import Tenant
from fakescope.service.webhooks import standard_secret

router = APIRouter(prefix="/webhook-secret", tags=["webhooks"])


class WebhookSecret(BaseModel):
    secret: str
    standard_secret: str = Field(
        description="the same secret as Standard Webhooks libraries take it (whsec_ + base64 of its bytes)"
    )
    algorithm: str = (
        "Standard Webhooks: webhook-signature v1,<base64 HMAC-SHA256(secret, '<webhook-id>.<webhook-timestamp>.'"
        " + body)>; also X-Fakescope-Signature: t=<t>,v1=<hex HMAC-SHA256(secret, '<t>.' + body)>"
    )

    @classmethod
    def of(cls, secret: str) -> WebhookSecret:
        return cls(secret=secret, standard_secret=standard_secret(secret))


def _tenant(session: SessionDep, tenant_id: TenantDep) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Tenant not found")
    return tenant


@router.get("", response_model=WebhookSecret)
def get_secret(session: SessionDep, tenant_id: TenantDep) -> WebhookSecret:
    return WebhookSecret.of(_tenant(session, tenant_id).webhook_secret)


@router.post("/rotate", response_model=WebhookSecret)
def rotate_secret(session: SessionDep, tenant_id: TenantDep) -> WebhookSecret:
    """A new secret; deliveries from now on are signed with it."""
    tenant = _tenant(session, tenant_id)
    tenant.webhook_secret = secrets.token_hex(32)
    session.add(tenant)
    session.commit()
    return WebhookSecret.of(tenant.webhook_secret)
