"""The API's response schemas beside the tables' own (fakescope.db.models: JobPublic, JobCreate, ...),
and the one mapping from an item row to its public result."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from fakescope.db.models import JobItem, JobPublic
from fakescope.result import ResultContract

__all__ = [
    "UNPROCESSABLE",
    "DeliveriesPage",
    "Delivery",
    "FailuresPage",
    "FieldError",
    "ItemFailure",
    "ItemResult",
    "Page",
    "ReportLink",
    "ResultsPage",
    "ShardTarget",
    "Unprocessable",
    "UploadJobPublic",
    "UploadTarget",
    "item_result",
]

T = TypeVar("T")


class ItemResult(ResultContract):
    """One classified image: the result contract's fields (fakescope.result), then the job's own."""

    id: uuid.UUID
    position: int
    name: str
    cached: bool = Field(False, description="answered from this tenant's earlier result for the same bytes and model")
    overlay_url: str | None
    image_url: str | None = None
    explain_status: str
    artifacts: list[str] | None
    explanation: dict[str, str] | None
    evidence: list[dict[str, Any]] | None = Field(
        None,
        description="the reasons as data: artifact, signal, measured value, and how many times as common that "
        "value is among generated images as among photos (ratio, at least 2)",
    )
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None


class ItemFailure(BaseModel):
    id: uuid.UUID
    position: int
    name: str
    error: str | None


class Page(BaseModel, Generic[T]):
    """One page of a job's items in upload order: ``count`` in all, from ``offset``, at most ``limit``."""

    data: list[T]
    count: int
    offset: int
    limit: int


ResultsPage = Page[ItemResult]
FailuresPage = Page[ItemFailure]


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Unprocessable(BaseModel):
    """A 422: FastAPI's list of field errors, or one sentence from a check the route makes itself."""

    detail: str | list[FieldError]


# Routes that refuse a request with their own 422 (a callback URL, a job size) document both forms.
UNPROCESSABLE: dict[int | str, dict[str, Any]] = {422: {"model": Unprocessable}}


class UploadTarget(BaseModel):
    id: uuid.UUID
    position: int
    name: str
    upload_url: str


class ShardTarget(BaseModel):
    index: int = Field(description="the shard's place in the request's ``shards``")
    upload_url: str


class UploadJobPublic(BaseModel):
    job: JobPublic
    uploads: list[UploadTarget]
    shard_uploads: list[ShardTarget] = Field(default_factory=list, description="one PUT URL per shard, in order")
    start_url: str


class ReportLink(BaseModel):
    url: str = Field(description="the report page with a read-only token for this job in its fragment")
    token: str = Field(description="the token alone: send it as X-Report-Token to the job's GET routes")
    expires_at: datetime


def item_result(item: JobItem, overlay_url: str | None, image_url: str) -> ItemResult:
    return ItemResult(
        **ResultContract.model_validate(item).stored(),
        id=item.id,
        position=item.position,
        name=item.name,
        cached=item.cached,
        overlay_url=overlay_url,
        image_url=image_url,
        explain_status=item.explain_status,
        artifacts=item.artifacts,
        explanation=item.explanation,
        evidence=item.evidence,
        started_at=item.started_at,
        finished_at=item.finished_at,
        duration_ms=item.duration_ms,
    )


class Delivery(BaseModel):
    delivery_id: uuid.UUID
    attempt: int
    url: str
    event: str
    status_code: int | None
    outcome: str
    duration_ms: float | None
    created_at: datetime


class DeliveriesPage(BaseModel):
    data: list[Delivery]
