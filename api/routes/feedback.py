"""Feedback: ``POST /v1/jobs/{id}/items/{position}/feedback`` and ``GET /v1/feedback``."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, Request, Response, status
from prometheus_client import Counter

from api.deps import ItemPosition, Limit, Offset, SessionDep, SettingsDep, StoreDep, TenantDep
from api.routes.jobs import image_url
from api.schemas import Page
from fakescope.db.models import Feedback, FeedbackCreate, FeedbackPublic, JobItem
from fakescope.service.feedback import FeedbackError, give_feedback, list_feedback
from fakescope.settings import Settings
from fakescope.storage import ObjectStore

router = APIRouter(tags=["feedback"])

ITEM_NOT_FOUND = "Item not found"
# Disputes (label differs from verdict) and confirmations, by the verdict they answer.
FEEDBACK = Counter(
    "fakescope_feedback", "Feedback given (new or changed labels), by verdict and label.", ["verdict", "label"]
)


def _public(request: Request, settings: Settings, store: ObjectStore, f: Feedback, item: JobItem) -> FeedbackPublic:
    return FeedbackPublic.model_validate(
        f,
        update={
            "name": item.name,
            "disputed": f.verdict != f.label,
            "image_url": image_url(request, settings, store, item),
        },
    )


@router.post(
    "/jobs/{job_id}/items/{position}/feedback",
    status_code=status.HTTP_201_CREATED,
    response_model=FeedbackPublic,
    responses={200: {"model": FeedbackPublic, "description": "the item already had feedback"}, 404: {}, 409: {}},
)
def post_feedback(
    request: Request,
    response: Response,
    job_id: uuid.UUID,
    position: ItemPosition,
    body: FeedbackCreate,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> FeedbackPublic:
    """Labels one classified image ``real`` or ``fake`` (an appeal, or a reviewer's correction).

    ``201`` for a new label; ``200`` when the item had one (the same label again changes nothing;
    another replaces it). ``409`` when the item has no verdict.
    """
    try:
        given = give_feedback(session, tenant_id=tenant, job_id=job_id, position=position, body=body)
    except FeedbackError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(e)) from None
    if given is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=ITEM_NOT_FOUND)
    if not given.created:
        response.status_code = status.HTTP_200_OK
    if given.changed:
        FEEDBACK.labels(given.feedback.verdict or "none", given.feedback.label).inc()
    return _public(request, settings, store, given.feedback, given.item)


@router.get("/feedback", response_model=Page[FeedbackPublic])
def get_feedback(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    tenant: TenantDep,
    offset: Offset = 0,
    limit: Limit = 100,
) -> Page[FeedbackPublic]:
    """The caller's feedback, oldest first, each with a signed URL of the original."""
    rows, count = list_feedback(session, tenant_id=tenant, offset=offset, limit=limit)
    data = [_public(request, settings, store, f, it) for f, it in rows]
    return Page[FeedbackPublic](data=data, count=count, offset=offset, limit=limit)
