"""The tenant's default operating point: ``GET`` and ``PUT /v1/operating-point``.

Jobs and checks that give no thresholds of their own are scored at it; a job keeps the point it was
created with, so changing the default never changes a verdict already given.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep, TenantDep
from fakescope.result import OperatingPoint
from fakescope.service import tenants

router = APIRouter(prefix="/operating-point", tags=["operating point"])


@router.get("", response_model=OperatingPoint)
def get_operating_point(session: SessionDep, tenant: TenantDep) -> OperatingPoint:
    """The thresholds a job or check without its own is scored at."""
    return tenants.operating_point(session, tenant_id=tenant)


@router.put("", response_model=OperatingPoint)
def set_operating_point(body: OperatingPoint, session: SessionDep, tenant: TenantDep) -> OperatingPoint:
    """Sets the tenant's default (for instance the thresholds ``fakescope calibrate --target-fpr``
    printed for the platform's own labelled images); jobs already created keep theirs."""
    return tenants.set_operating_point(session, tenant_id=tenant, point=body)
