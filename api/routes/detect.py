"""``/v1/detect``: one image, answered in the request, within a deadline."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status

from api.deps import ServicesDep, SessionDep, SettingsDep, TenantDep
from api.routes.jobs import FakeThreshold, RealThreshold, resolve_point, result_with_urls
from api.schemas import UNPROCESSABLE, ItemResult
from fakescope.db.models import ItemStatus
from fakescope.service import jobs as svc
from fakescope.service import uploads, urls
from fakescope.service.detect import wait_for_item
from fakescope.service.idempotency import JobRequest

router = APIRouter(prefix="/detect", tags=["detect"])

POOL_BUSY = "The classify pool did not answer in time; retry later"
NOT_ONE_IMAGE = "Send exactly one image (an archive is not one image)"
FILE_OR_URL = "Send either a file or a url"


@router.post(
    "",
    response_model=ItemResult,
    responses={
        **UNPROCESSABLE,
        503: {"description": "the classify pool could not answer within the deadline (Retry-After says when to retry)"},
    },
)
def detect(
    request: Request,
    session: SessionDep,
    services: ServicesDep,
    settings: SettingsDep,
    tenant: TenantDep,
    file: Annotated[UploadFile | None, File(description="One image (or give url).")] = None,
    url: Annotated[
        str | None, Form(max_length=2048, description="or: the image's URL, fetched by the classify pool")
    ] = None,
    overlays: Annotated[bool, Form(description="a GradCAM overlay URL in the answer (false: verdict only)")] = True,
    fake_threshold: FakeThreshold = None,
    real_threshold: RealThreshold = None,
) -> ItemResult:
    """Classifies one image and answers with the same result object a job's item has.

    It runs on the classify pool, ahead of queued job chunks, and uses this tenant's result cache: the
    same bytes are answered at once. When the pool cannot answer within ``detect_timeout_s`` the check
    is dropped and the answer is 503 with ``Retry-After``; a bad image is 422 with its reason.
    """
    if (file is None) == (url is None):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=FILE_OR_URL)
    asked = JobRequest(
        tenant_id=tenant, overlays=overlays, point=resolve_point(session, tenant, fake_threshold, real_threshold)
    )
    if url is not None:
        job, _ = urls.create_url_job(session, services.enqueuer.detect, asked, urls=[url])
    else:
        assert file is not None
        with tempfile.TemporaryDirectory(prefix="fakescope-detect-") as tmp:
            inputs = list(uploads.expand_uploads([(file.filename or "image", file.file)], FilePath(tmp)))
            if len(inputs) != 1:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=NOT_ONE_IMAGE)
            job, _ = uploads.create_job(
                session,
                services.store,
                services.enqueuer.detect,
                asked,
                inputs=inputs,
                max_items=1,
                budget=services.upload_budget,
            )
    item = wait_for_item(settings.sqlalchemy_url, job_id=job.id, timeout_s=settings.detect_timeout_s)
    if item is None or item.status == ItemStatus.CANCELLED:
        # Nobody waits for it any more: the workers skip a cancelled job's items.
        svc.cancel_job(session, job=job)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=POOL_BUSY,
            headers={"Retry-After": str(max(1, math.ceil(settings.detect_timeout_s)))},
        )
    if item.status == ItemStatus.FAILED:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY, detail=item.error or "the image could not be classified"
        )
    return result_with_urls(request, settings, services.store, item)
