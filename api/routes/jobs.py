"""``/v1/jobs``: submit image batches, follow them, read their results, cancel them."""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)
from pydantic import ValidationError
from sqlmodel import Session, col, select

from api.deps import (
    EnqueuerDep,
    ItemPosition,
    Limit,
    Offset,
    ServicesDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    TenantDep,
)
from api.schemas import (
    UNPROCESSABLE,
    DeliveriesPage,
    Delivery,
    FailuresPage,
    ItemFailure,
    ItemResult,
    ReportLink,
    ResultsPage,
    ShardTarget,
    UploadJobPublic,
    UploadTarget,
    item_result,
)
from fakescope.answers import detection_answers, explanation_answers
from fakescope.db.models import (
    Job,
    JobBase,
    JobCreate,
    JobItem,
    JobPublic,
    JobsPublic,
    UrlJobCreate,
    WebhookDelivery,
)
from fakescope.imageio import sniff_media_type
from fakescope.result import OperatingPoint
from fakescope.service import jobs as svc
from fakescope.service import tenants, uploads, urls
from fakescope.service.idempotency import JobRequest
from fakescope.service.originals import read_original, same_original
from fakescope.service.overlays import image_resource, overlay_resource
from fakescope.service.overlays import item_overlay as item_overlay_png
from fakescope.service.tenants import make_report_token
from fakescope.service.webhooks import CallbackURLError, check_callback_url
from fakescope.settings import Settings
from fakescope.storage import ObjectNotFound, ObjectStore, ObjectTooLarge, sign_url, verify_url

router = APIRouter(prefix="/jobs", tags=["jobs"])
logger = logging.getLogger(__name__)

JOB_NOT_FOUND = "Job not found"
THRESHOLDS_OUT_OF_ORDER = "real_threshold must not be above fake_threshold"
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9._:~+/=-]+$",
        description="Retries with the same key return the same job: 1-255 letters, digits or ._:~+/=-",
    ),
]


def _status_url(request: Request, job_id: uuid.UUID) -> str:
    return str(request.url_for("get_job", job_id=job_id))


def _job_or_404(session: SessionDep, tenant: uuid.UUID, job_id: uuid.UUID) -> Job:
    job = svc.get_job(session, tenant_id=tenant, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=JOB_NOT_FOUND)
    return job


def _check_callback(url: str | None, settings: Settings) -> None:
    if not url:
        return
    try:
        check_callback_url(url, settings.callback.allowed_networks, allowed_ports=settings.callback.allowed_ports)
    except CallbackURLError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=str(e)) from e


FakeThreshold = Annotated[
    float | None, Form(gt=0.0, le=1.0, description="fake at this probability and above (default: the tenant's)")
]
RealThreshold = Annotated[
    float | None,
    Form(gt=0.0, le=1.0, description="real below this probability; up to fake_threshold: uncertain (default: none)"),
]


def resolve_point(
    session: SessionDep, tenant: uuid.UUID, fake_threshold: float | None, real_threshold: float | None
) -> OperatingPoint:
    """The request's operating point, else the tenant's default; 422 when the two are out of order."""
    try:
        return tenants.operating_point(
            session, tenant_id=tenant, fake_threshold=fake_threshold, real_threshold=real_threshold
        )
    except ValidationError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=THRESHOLDS_OUT_OF_ORDER) from e


def job_request(
    session: Session, settings: Settings, tenant: uuid.UUID, options: JobBase, idempotency_key: str | None
) -> JobRequest:
    """A new job's options as the service takes them, from a request's: its callback URL checked and
    its operating point resolved (the tenant's default where the request gives none)."""
    _check_callback(options.callback_url, settings)
    return JobRequest(
        tenant_id=tenant,
        explain=options.explain,
        overlays=options.overlays,
        callback_url=options.callback_url or None,
        idempotency_key=idempotency_key,
        point=resolve_point(session, tenant, options.fake_threshold, options.real_threshold),
    )


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses=UNPROCESSABLE)
def create_job(
    request: Request,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    settings: SettingsDep,
    tenant: TenantDep,
    files: Annotated[list[UploadFile], File(description="Images and/or zip/tar archives of images.")],
    explain: Annotated[bool, Form()] = False,
    overlays: Annotated[bool, Form(description="a GradCAM overlay PNG per image (false: verdicts only)")] = True,
    callback_url: Annotated[str | None, Form(max_length=2048)] = None,
    fake_threshold: FakeThreshold = None,
    real_threshold: RealThreshold = None,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Uploads a batch; answers 202 with the job and its status URL while workers classify it."""
    options = JobBase(
        explain=explain,
        overlays=overlays,
        callback_url=callback_url,
        fake_threshold=fake_threshold,
        real_threshold=real_threshold,
    )
    asked = job_request(session, settings, tenant, options, idempotency_key)
    with tempfile.TemporaryDirectory(prefix="fakescope-upload-") as tmp:
        inputs = uploads.expand_uploads([(f.filename or "", f.file) for f in files], FilePath(tmp))
        # A retry sends the same files (names and sizes) with the same options; hashing the bytes
        # themselves would read a 2-GB body twice.
        job, created = uploads.create_job(
            session,
            services.store,
            services.enqueuer.classify,
            asked,
            inputs=inputs,
            max_items=settings.max_items_per_job,
            fingerprint=asked.fingerprint("jobs", files=[(f.filename, f.size) for f in files]),
            budget=services.upload_budget,
            enqueue_webhook=services.enqueuer.webhook,
        )
    url = _status_url(request, job.id)
    response.headers["Location"] = url
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return svc.job_public(session, job, url)


@router.post("/uploads", status_code=status.HTTP_201_CREATED, response_model=UploadJobPublic, responses=UNPROCESSABLE)
def create_upload_job(
    request: Request,
    body: JobCreate,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> UploadJobPublic:
    """For batches too large for one request: presigned PUT URLs, then ``POST /start``.

    With ``names``, one URL per image (``uploads``). With ``shards``, one URL per shard
    (``shard_uploads``): the client packs up to 256 images or 64 MiB into an uncompressed tar, says
    where each member's bytes lie, and makes one request per shard instead of one per image.
    """
    asked = job_request(session, settings, tenant, body, idempotency_key)
    if body.count > settings.max_items_per_job:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail="Too many images for one job")
    shards = None
    if body.shards is not None:
        shards = [[(m.name, m.offset, m.length) for m in shard.members] for shard in body.shards]
    job, urls, _ = uploads.create_upload_job(
        session, store, asked, names=body.names, shards=shards, expires_s=settings.presign_expiry_s
    )
    public = svc.job_public(session, job, _status_url(request, job.id))
    start_url = str(request.url_for("start_job", job_id=job.id))
    if shards is not None or (urls and urls[0][0].object_offset is not None):
        targets = [ShardTarget(index=i, upload_url=u) for i, (_, u) in enumerate(urls)]
        return UploadJobPublic(job=public, uploads=[], shard_uploads=targets, start_url=start_url)
    per_image = [UploadTarget(id=it.id, position=it.position, name=it.name, upload_url=u) for it, u in urls]
    return UploadJobPublic(job=public, uploads=per_image, start_url=start_url)


@router.post("/urls", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses=UNPROCESSABLE)
def create_url_job(
    request: Request,
    response: Response,
    body: UrlJobCreate,
    session: SessionDep,
    enqueuer: EnqueuerDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Images that already live somewhere, by URL: ``202`` with the job at once; the workers fetch
    each URL (never the API), and a URL that is refused or fails fails its own item with the reason."""
    asked = job_request(session, settings, tenant, body, idempotency_key)
    if len(body.urls) > settings.max_items_per_job:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail="Too many images for one job")
    job, created = urls.create_url_job(
        session, enqueuer.classify, asked, urls=body.urls, enqueue_webhook=enqueuer.webhook
    )
    url = _status_url(request, job.id)
    response.headers["Location"] = url
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return svc.job_public(session, job, url)


@router.post("/{job_id}/start", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def start_job(
    request: Request, job_id: uuid.UUID, session: SessionDep, store: StoreDep, enqueuer: EnqueuerDep, tenant: TenantDep
) -> JobPublic:
    job = _job_or_404(session, tenant, job_id)
    try:
        job = uploads.start_job(session, store, enqueuer.classify, job=job, enqueue_webhook=enqueuer.webhook)
    except svc.JobStateError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(e)) from e
    return svc.job_public(session, job, _status_url(request, job.id))


@router.get("", response_model=JobsPublic)
def list_jobs(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobsPublic:
    jobs, count = svc.list_jobs(session, tenant_id=tenant, offset=offset, limit=limit)
    counts = svc.jobs_counts(session, job_ids=[j.id for j in jobs])
    return JobsPublic(
        data=[svc.job_public(session, j, _status_url(request, j.id), counts[j.id]) for j in jobs], count=count
    )


@router.get("/{job_id}", response_model=JobPublic)
def get_job(request: Request, job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> JobPublic:
    job = _job_or_404(session, tenant, job_id)
    public = svc.job_public(session, job, _status_url(request, job.id))
    if getattr(request.state, "report_token", False):
        # A shared report link shows the report, not where the tenant's webhooks go.
        public.callback_url = None
    return public


@router.post("/{job_id}/report-link", status_code=status.HTTP_201_CREATED, response_model=ReportLink)
def create_report_link(
    request: Request, job_id: uuid.UUID, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> ReportLink:
    """A link to share the job's report page: it reads this job only, for ``FAKESCOPE_REPORT_LINK_EXPIRY_S``.

    The token rides in the URL fragment, which browsers never send to a server; the page then sends it
    as ``X-Report-Token``. It cannot submit, cancel or read any other job, and needs no tenant key.
    """
    job = _job_or_404(session, tenant, job_id)
    expires = int(time.time()) + settings.report_link_expiry_s
    token = make_report_token(settings.secret_key, job_id=job.id, tenant_id=job.tenant_id, expires=expires)
    url = str(request.url_for("report_page", job_id=job.id)) + f"#token={token}"
    return ReportLink(url=url, token=token, expires_at=datetime.fromtimestamp(expires, UTC))


@router.delete("/{job_id}", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def cancel_job(
    request: Request, job_id: uuid.UUID, session: SessionDep, enqueuer: EnqueuerDep, tenant: TenantDep
) -> JobPublic:
    """Cancels the job: images not classified yet never will be. Finished jobs are left as they are.

    A job this call cancels sends its webhook (state ``cancelled``) through the webhooks queue.
    """
    job = svc.cancel_job(session, job=_job_or_404(session, tenant, job_id), enqueue_webhook=enqueuer.webhook)
    return svc.job_public(session, job, _status_url(request, job.id))


OVERLAY_NOT_FOUND = "Overlay not found"
ORIGINAL_CHANGED = "The original was replaced after it was classified; it is not this result's image"
IMAGE_NOT_FOUND = "Image not found"


def _signed_url(request: Request, settings: Settings, route: str, resource: str, **params: object) -> str:
    """A URL of one of the routes below, usable without a key until it expires (as a presigned object
    URL is), so a browser's ``<img>`` and a plain download can fetch it."""
    expires = int(time.time()) + settings.presign_expiry_s
    signature = sign_url(settings.secret_key, "GET", resource, expires)
    return str(request.url_for(route, **params)) + "?" + urlencode({"expires": expires, "signature": signature})


def _overlay_url(request: Request, settings: Settings, item: JobItem) -> str | None:
    if not (item.cam_grid or item.overlay_key):
        return None
    resource = overlay_resource(item.job_id, item.position)
    return _signed_url(request, settings, "item_overlay", resource, job_id=item.job_id, position=item.position)


def image_url(request: Request, settings: Settings, store: ObjectStore, item: JobItem) -> str:
    """A signed URL of the item's original, served by the API, which checks that the bytes are still
    the ones classified: a presigned upload URL outlives the job's start, so the object store's own
    URL could show other pixels under this verdict."""
    resource = image_resource(item.job_id, item.position)
    return _signed_url(request, settings, "item_image", resource, job_id=item.job_id, position=item.position)


def result_with_urls(request: Request, settings: Settings, store: ObjectStore, item: JobItem) -> ItemResult:
    """An item's result as the API answers it, with its signed overlay and image URLs."""
    return item_result(item, _overlay_url(request, settings, item), image_url(request, settings, store, item))


def _check_signed(settings: Settings, resource: str, expires: int, signature: str) -> None:
    if not verify_url(settings.secret_key, "GET", resource, expires, signature):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Invalid or expired signature")


# A signed URL's query: when it expires (Unix time) and its signature (storage.sign_url).
Expires = Annotated[int, Query()]
Signature = Annotated[str, Query(max_length=128)]


@dataclass(frozen=True)
class SignedItem:
    """One job item named by a signed URL (no API key), its signature checked."""

    job_id: uuid.UUID
    position: int


def _signed(resource: Callable[[uuid.UUID, int], str]) -> Any:
    """The dependency of a route served by signed URL: 403 unless the query's ``expires`` and
    ``signature`` sign ``resource`` of the path's item."""

    def check(
        job_id: uuid.UUID, position: ItemPosition, settings: SettingsDep, expires: Expires, signature: Signature
    ) -> SignedItem:
        _check_signed(settings, resource(job_id, position), expires, signature)
        return SignedItem(job_id, position)

    return Depends(check)


SignedImage = Annotated[SignedItem, _signed(image_resource)]
SignedOverlay = Annotated[SignedItem, _signed(overlay_resource)]


@router.get(
    "/{job_id}/items/{position}/image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, 403: {}, 404: {}},
)
def item_image(signed: SignedImage, session: SessionDep, store: StoreDep) -> Response:
    """One original image, by the signed URL its result carries (``image_url``): its bytes, read from
    the upload window's shard it is stored in."""
    where = (JobItem.job_id == signed.job_id, JobItem.position == signed.position)
    item = session.exec(select(JobItem).where(*where)).first()
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=IMAGE_NOT_FOUND)
    try:
        data = read_original(store, item)
    except (ObjectNotFound, ObjectTooLarge):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=IMAGE_NOT_FOUND) from None
    if not same_original(item, data):
        raise HTTPException(status.HTTP_409_CONFLICT, detail=ORIGINAL_CHANGED)
    return Response(data, media_type=sniff_media_type(data), headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/{job_id}/items/{position}/overlay.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 403: {}, 404: {}},
)
def item_overlay(signed: SignedOverlay, session: SessionDep, store: StoreDep) -> Response:
    """The GradCAM overlay PNG of one image, by the signed URL its result carries (``overlay_url``).

    Drawn from the original and its GradCAM grid the first time it is asked for, then stored.
    """
    png = item_overlay_png(session, store, job_id=signed.job_id, position=signed.position)
    if png is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=OVERLAY_NOT_FOUND)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{job_id}/results", response_model=ResultsPage)
def job_results(
    request: Request,
    job_id: uuid.UUID,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    tenant: TenantDep,
    offset: Offset = 0,
    limit: Limit = 100,
) -> ResultsPage:
    """Classified images in upload order, with signed overlay URLs; failed ones are under ``/failures``."""
    _job_or_404(session, tenant, job_id)
    items, count = svc.list_results(session, job_id=job_id, offset=offset, limit=limit)
    data = [result_with_urls(request, settings, store, it) for it in items]
    return ResultsPage(data=data, count=count, offset=offset, limit=limit)


@router.get("/{job_id}/failures", response_model=FailuresPage)
def job_failures(
    job_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    offset: Offset = 0,
    limit: Limit = 100,
) -> FailuresPage:
    """Images that could not be classified, each with its reason."""
    _job_or_404(session, tenant, job_id)
    items, count = svc.list_failures(session, job_id=job_id, offset=offset, limit=limit)
    data = [ItemFailure(id=it.id, position=it.position, name=it.name, error=it.error) for it in items]
    return FailuresPage(data=data, count=count, offset=offset, limit=limit)


@router.get("/{job_id}/task1.json")
def job_task1(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> list[dict[str, Any]]:
    """``[{"index": 1, "prediction": "real"}, ...]`` for every classified image."""
    _job_or_404(session, tenant, job_id)
    return detection_answers(svc.task_entries(session, job_id=job_id))


@router.get("/{job_id}/task2.json")
def job_task2(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> list[dict[str, Any]]:
    """``[{"index": 2, "explanation": {artifact: reason}}, ...]`` for the images predicted fake."""
    _job_or_404(session, tenant, job_id)
    return explanation_answers(svc.task_entries(session, job_id=job_id))


@router.get("/{job_id}/deliveries", response_model=DeliveriesPage)
def job_deliveries(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> DeliveriesPage:
    """Every attempt to deliver the job's webhook, oldest first: status code or error, and timing."""
    _job_or_404(session, tenant, job_id)
    rows = session.exec(
        select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(col(WebhookDelivery.created_at))
    ).all()
    return DeliveriesPage(data=[Delivery.model_validate(r, from_attributes=True) for r in rows])
