"""The model registry, for the service's admins: ``/v1/models``.

``POST /v1/models/train`` registers a fine-tune and hands its first epoch to the train pool; ``GET``
shows the registry (progress while training, the gate's side-by-side comparison after);
``POST /v1/models/{version}/promote`` and ``POST /v1/models/rollback`` change what the classify workers
answer with, at their next chunk. Only tenants named in ``FAKESCOPE_MODELS_ADMIN_TENANTS`` may call them:
the promoted model answers every tenant.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status

from api.deps import EnqueuerDep, Limit, Offset, SessionDep, SettingsDep, TenantDep
from api.schemas import Page
from fakescope.db.models import ModelTrainCreate, ModelVersion, ModelVersionPublic, Tenant
from fakescope.service import models

router = APIRouter(prefix="/models", tags=["models"])

NOT_ADMIN = "Only the service's admin tenants manage models"
NOT_FOUND = "Model version not found"


def require_admin(session: SessionDep, settings: SettingsDep, tenant: TenantDep) -> str:
    """The calling tenant's name, if it is one of the admins; 403 otherwise."""
    row = session.get(Tenant, tenant)
    if row is None or row.name not in settings.models.admin_tenants:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=NOT_ADMIN)
    return row.name


AdminDep = Annotated[str, Depends(require_admin)]


def _public(row: ModelVersion, shadow: dict[str, Any] | None = None) -> ModelVersionPublic:
    return ModelVersionPublic.model_validate({**row.model_dump(), "shadow": shadow})


@router.post("/train", response_model=ModelVersionPublic, status_code=status.HTTP_202_ACCEPTED)
def train_model(
    body: ModelTrainCreate, session: SessionDep, settings: SettingsDep, enqueuer: EnqueuerDep, admin: AdminDep
) -> ModelVersionPublic:
    """Fine-tunes the promoted version (or ``base``) on ``source`` with the shipped recipe, as a job of
    the train pool; poll ``GET /v1/models/{version}`` for its progress and, once a candidate, its comparison."""
    cfg = settings.models
    try:
        row = models.request_training(
            session,
            body=body,
            requested_by=admin,
            epochs=body.epochs or cfg.epochs,
            recipe={"recipe": "fast", "batch_size": cfg.batch_size, "lr": cfg.lr},
        )
    except models.ModelNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"No base version {body.base}") from None
    except models.ModelConflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(e)) from None
    enqueuer.train(row.version, 0)
    return _public(row)


@router.get("", response_model=Page[ModelVersionPublic])
def list_models(
    session: SessionDep,
    admin: AdminDep,
    offset: Offset = 0,
    limit: Limit = 100,
) -> Page[ModelVersionPublic]:
    """Every version, newest first (the shipped checkpoint is the implicit first, ``shipped``)."""
    rows, count = models.list_versions(session, offset=offset, limit=limit)
    return Page[ModelVersionPublic](data=[_public(r) for r in rows], count=count, offset=offset, limit=limit)


@router.get("/{version}", response_model=ModelVersionPublic)
def get_model(version: str, session: SessionDep, admin: AdminDep) -> ModelVersionPublic:
    """One version: lineage, progress, the gate's comparison and, once it shadowed, its shadow statistics."""
    try:
        row = models.get_version(session, version=version)
    except models.ModelNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=NOT_FOUND) from None
    return _public(row, models.shadow_stats(session, version=version))


@router.post("/{version}/shadow", response_model=ModelVersionPublic)
def shadow_model(
    version: str, session: SessionDep, admin: AdminDep, on: Annotated[bool, Query()] = True
) -> ModelVersionPublic:
    """Lets a candidate score ``FAKESCOPE_MODELS_SHADOW_SHARE`` of live traffic without answering (``on=false``
    stops it); one version shadows at a time. Its agreement with the live answers shows in ``GET``."""
    try:
        row = models.set_shadow(session, version=version, on=on)
    except models.ModelNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=NOT_FOUND) from None
    except models.ModelConflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(e)) from None
    return _public(row, models.shadow_stats(session, version=version))


@router.post("/{version}/promote", response_model=ModelVersionPublic)
def promote_model(version: str, session: SessionDep, settings: SettingsDep, admin: AdminDep) -> ModelVersionPublic:
    """Makes ``version`` live, if the gate lets it: 409 with the sets where it loses, otherwise."""
    try:
        return _public(models.promote(session, version=version, margin=settings.models.gate_margin))
    except models.ModelNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=NOT_FOUND) from None
    except models.ModelConflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(e)) from None


@router.post("/rollback")
def rollback_model(session: SessionDep, admin: AdminDep) -> dict[str, str]:
    """Retires the promoted version; the one promoted before it (or the shipped checkpoint) answers again."""
    try:
        before = models.rollback(session)
    except models.ModelConflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(e)) from None
    return {"promoted": before.version if before is not None else models.SHIPPED}
