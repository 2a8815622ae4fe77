"""Tables of the job service: tenants, their API keys, jobs and one item per image.

SQLModel families follow FastAPI's full-stack template: ``*Base`` holds the shared fields, the
``table=True`` class the stored ones, ``*Public`` what the API returns.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import StringConstraints, model_validator
from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, UniqueConstraint, text
from sqlmodel import AutoString, Field, SQLModel

from fakescope.result import OperatingPoint

__all__ = [
    "ApiKey",
    "ExplainStatus",
    "Feedback",
    "FeedbackCreate",
    "FeedbackLabel",
    "FeedbackPublic",
    "ItemStatus",
    "Job",
    "JobBase",
    "JobCounts",
    "JobCreate",
    "JobItem",
    "JobPublic",
    "JobState",
    "JobsPublic",
    "ModelStatus",
    "ModelTrainCreate",
    "ModelVersion",
    "ModelVersionPublic",
    "ShadowScore",
    "Tenant",
    "UrlJobCreate",
    "WebhookDelivery",
    "storable_name",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobState(StrEnum):
    AWAITING_UPLOAD = "awaiting_upload"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


class ItemStatus(StrEnum):
    AWAITING_UPLOAD = "awaiting_upload"
    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ExplainStatus(StrEnum):
    NONE = "none"
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=255, unique=True)
    # Signs this tenant's webhook deliveries (HMAC-SHA256); shown to the tenant by GET /v1/webhook-secret.
    webhook_secret: str = Field(default_factory=lambda: secrets.token_hex(32), max_length=128)
    # The tenant's default operating point (PUT /v1/operating-point); None: 0.5, no band.
    fake_threshold: float | None = None
    real_threshold: float | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class ApiKey(SQLModel, table=True):
    """An API key, stored as the SHA-256 of the key: keys are 256 random bits, so no slow hash is needed."""

    __tablename__ = "api_keys"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", index=True, ondelete="CASCADE")
    key_hash: str = Field(max_length=64, unique=True, index=True)
    prefix: str = Field(max_length=16, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


# Item names are what the client called its files; the column holds this many characters, and
# Postgres text can never hold NUL.
ITEM_NAME_MAX = 1024
ItemName = Annotated[str, StringConstraints(max_length=ITEM_NAME_MAX, pattern=r"^[^\x00]*$")]


def storable_name(name: str) -> str:
    """``name`` as an item can store it: NUL replaced, and the middle of an over-long name elided."""
    name = name.replace("\x00", "\ufffd")
    if len(name) <= ITEM_NAME_MAX:
        return name
    keep = (ITEM_NAME_MAX - 1) // 2
    return f"{name[:keep]}…{name[-(ITEM_NAME_MAX - 1 - keep) :]}"


class JobBase(SQLModel):
    explain: bool = False
    # A GradCAM overlay PNG per image; a platform that only needs verdicts saves their encoding and storage.
    overlays: bool = Field(default=True, sa_column_kwargs={"server_default": "true"})
    callback_url: str | None = Field(default=None, max_length=2048)
    # The operating point (fakescope.result.OperatingPoint): asked for by the request, else the
    # tenant's default, else 0.5; a job stores what it was scored at, so its verdicts never change.
    fake_threshold: float | None = Field(
        default=None, gt=0.0, le=1.0, description="fake at this probability and above (default: the tenant's, else 0.5)"
    )
    real_threshold: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="real below this probability; between it and fake_threshold the verdict is uncertain "
        "(default: the tenant's when fake_threshold is not given either, else no band)",
    )

    def operating_point(self) -> OperatingPoint:
        return OperatingPoint(fake_threshold=self.fake_threshold or 0.5, real_threshold=self.real_threshold)


# A shard a client uploads holds at most this many images and bytes (as the API's own upload windows).
SHARD_MAX_ITEMS = 256
SHARD_MAX_BYTES = 64 * 1024**2


class ShardMember(SQLModel):
    """One image in a client's shard: its name and where its bytes lie (a tar member's data offset)."""

    name: ItemName
    offset: int = Field(ge=0, lt=SHARD_MAX_BYTES)
    length: int = Field(ge=1, le=SHARD_MAX_BYTES)


class ShardSpec(SQLModel):
    """One object the client PUTs: an uncompressed tar (or any concatenation) of up to 256 images."""

    members: list[ShardMember] = Field(min_length=1, max_length=SHARD_MAX_ITEMS)


class JobCreate(JobBase):
    """A job whose images the client uploads itself, through presigned URLs: one per image
    (``names``), or one per shard of up to 256 images or 64 MiB (``shards``), one request each."""

    names: list[ItemName] | None = Field(
        None, min_length=1, description=f"file names, one per image to upload (at most {ITEM_NAME_MAX} characters each)"
    )
    shards: list[ShardSpec] | None = Field(
        None, min_length=1, description="or: the shards to upload, each with its members' names, offsets and lengths"
    )

    @model_validator(mode="after")
    def _one_layout(self) -> JobCreate:
        if (self.names is None) == (self.shards is None):
            raise ValueError("give either names (one upload per image) or shards, not both")
        for i, shard in enumerate(self.shards or []):
            if max(m.offset + m.length for m in shard.members) > SHARD_MAX_BYTES:
                raise ValueError(f"shard {i} is over the limit of {SHARD_MAX_BYTES} bytes")
            # Each byte belongs to one image: members that overlap would make a worker hold a copy of
            # the same bytes per member (128 members over most of an 8 MiB shard once cost 1 GB).
            end = 0
            for m in sorted(shard.members, key=lambda m: m.offset):
                if m.offset < end:
                    raise ValueError(f"shard {i}: member {m.name!r} overlaps the member before it")
                end = m.offset + m.length
        return self

    @property
    def count(self) -> int:
        return len(self.names) if self.names is not None else sum(len(s.members) for s in self.shards or [])


# An image URL as a job takes it (the worker checks where it points, fakescope.fetch).
ImageURL = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[^\x00-\x20]*$")]


class UrlJobCreate(JobBase):
    """A job of images that already live somewhere: the workers fetch each URL (https; http only
    where the service allows it) through the same outbound guard as webhooks."""

    urls: list[ImageURL] = Field(min_length=1, description="image URLs, one item each, in this order")


class Job(JobBase, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency"),
        Index(
            "ix_jobs_callback_pending",
            "callback_status",
            postgresql_where=text("callback_status = 'pending'"),
            sqlite_where=text("callback_status = 'pending'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", index=True, ondelete="CASCADE")
    state: str = Field(default=JobState.QUEUED, max_length=32, index=True)
    idempotency_key: str | None = Field(default=None, max_length=255)
    # SHA-256 of the route and the request the key was first used with: a reuse with another request
    # is refused rather than answered with a job it did not ask for.
    request_fingerprint: str | None = Field(default=None, max_length=64)
    total: int = 0
    error: str | None = None
    # "pending" while the webhook waits in the outbox (fakescope.service.webhooks), then the outcome.
    callback_status: str | None = Field(default=None, max_length=255)
    # When the pending webhook was last handed to the webhooks queue: the sweeper re-sends from it.
    callback_sent_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class JobCounts(SQLModel):
    total: int = 0
    queued: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    awaiting_upload: int = 0
    explain_pending: int = 0
    # The classified items (done) by verdict, which add up to ``done``, and those of them out of the
    # detector's domain (a flag on any verdict).
    real: int = 0
    fake: int = 0
    uncertain: int = 0
    out_of_domain: int = 0


class JobPublic(JobBase):
    id: uuid.UUID
    state: JobState
    counts: JobCounts
    status_url: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None = None
    # The webhook's delivery: "pending" while it waits in the outbox, then the last attempt's outcome
    # ("HTTP 204", "error: ...", "refused: ..."); None without a callback_url.
    callback_status: str | None = None


class JobsPublic(SQLModel):
    data: list[JobPublic]
    count: int


class JobItem(SQLModel, table=True):
    """One image of a job; ``(job_id, position)`` is its stable identity, so retried writes upsert it."""

    __tablename__ = "job_items"
    __table_args__ = (UniqueConstraint("job_id", "position", name="uq_job_items_job_position"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    job_id: uuid.UUID = Field(foreign_key="jobs.id", index=True, ondelete="CASCADE")
    position: int
    name: str = Field(max_length=ITEM_NAME_MAX)
    object_key: str = Field(max_length=1024)
    # Where the original lies in ``object_key`` when that is a shard holding a whole upload window
    # (one object, one request, for up to 256 images); both None: the object is the image.
    object_offset: int | None = Field(default=None, sa_type=BigInteger)
    object_length: int | None = Field(default=None, sa_type=BigInteger)
    # An image the caller named by URL: a worker fetches it (fakescope.fetch) and stores it at
    # ``object_key`` before classifying it; None: the caller uploaded the bytes.
    source_url: str | None = Field(default=None, max_length=2048)
    # Not indexed: chunks find their items by id, and an index on a few statuses led the planner to
    # scan every queued entry of the table, dead ones included, for each chunk (migration 0013).
    status: str = Field(default=ItemStatus.QUEUED, max_length=32)
    # The verdict at the job's operating point: real, fake or uncertain (fakescope.result.Verdict).
    prediction: str | None = Field(default=None, max_length=16)
    fake_probability: float | None = None
    # Distance from the training distribution over the checkpoint's threshold; above 1: out of domain.
    domain_score: float | None = None
    # Hashed by the API at upload (or by the worker on read), so a worker can answer an image this
    # tenant already had classified by the same model version without running the model again.
    sha256: str | None = Field(default=None, max_length=64, index=True)
    cached: bool = False
    width: int | None = None
    height: int | None = None
    overlay_key: str | None = Field(default=None, max_length=1024)
    # The GradCAM grid the overlay is drawn from (fakescope.overlay.grid_record); the overlay PNG is
    # drawn the first time it is asked for and ``overlay_key`` set then.
    cam_grid: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    # What the file declares about its origin (fakescope.provenance.provenance_summary: None when it
    # declares nothing), and what decided the prediction: "detector", or "provenance" when the file's
    # own valid manifest or metadata says it was generated (fake_probability stays the detector's).
    provenance: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    decided_by: str | None = Field(default=None, max_length=16)
    model_version: str | None = Field(default=None, max_length=255)
    error: str | None = None
    explain_status: str = Field(default=ExplainStatus.NONE, max_length=16)
    artifacts: list[str] | None = Field(default=None, sa_column=Column(JSON))
    explanation: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))
    # The reasons as data (artifact, signal, value, likelihood ratio, reason) from an explainer that
    # measures them; None from one that writes sentences only.
    evidence: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    explain_error: str | None = None
    attempts: int = 0
    # When the item's current work (classify, or explain once classified) was last handed to the broker;
    # the sweeper re-enqueues work that has waited past its deadline (a lost message, a Redis wipe).
    enqueued_at: datetime | None = Field(
        default_factory=utcnow,
        sa_type=DateTime(timezone=True),
    )
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    duration_ms: float | None = None
    explained_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class WebhookDelivery(SQLModel, table=True):
    """One attempt to deliver a webhook; the attempts of one delivery share ``delivery_id``."""

    __tablename__ = "webhook_deliveries"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    delivery_id: uuid.UUID = Field(index=True)
    job_id: uuid.UUID = Field(foreign_key="jobs.id", index=True, ondelete="CASCADE")
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", index=True, ondelete="CASCADE")
    url: str = Field(max_length=2048)
    event: str = Field(max_length=64)
    attempt: int
    status_code: int | None = None
    outcome: str = Field(max_length=255)
    duration_ms: float | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class FeedbackLabel(StrEnum):
    REAL = "real"
    FAKE = "fake"


class FeedbackBase(SQLModel):
    label: FeedbackLabel = Field(sa_type=AutoString(length=8), description="what the image really is: real or fake")
    note: str | None = Field(default=None, max_length=1000, description="why, in the reviewer's words")


class FeedbackCreate(FeedbackBase):
    """A reviewer's correction of one verdict."""


class Feedback(FeedbackBase, table=True):
    """A platform's label for one classified image: one row an item, replaced when the label changes.

    The verdict, probability and model version it corrects are copied from the item when it is given,
    so a dispute still says what it disputed after the image is classified again by a newer model.
    """

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("item_id", name="uq_feedback_item"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", index=True, ondelete="CASCADE")
    job_id: uuid.UUID = Field(foreign_key="jobs.id", index=True, ondelete="CASCADE")
    item_id: uuid.UUID = Field(foreign_key="job_items.id", ondelete="CASCADE")
    position: int
    verdict: str | None = Field(default=None, max_length=16)
    fake_probability: float | None = None
    model_version: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class FeedbackPublic(FeedbackBase):
    id: uuid.UUID
    job_id: uuid.UUID
    position: int
    name: str = Field(description="the image's name in its job")
    verdict: str | None = Field(description="the prediction the label corrects (or confirms)")
    fake_probability: float | None
    model_version: str | None
    disputed: bool = Field(description="the label differs from the verdict")
    image_url: str | None = Field(
        None, description="the original, by a signed URL (usable without a key until it expires)"
    )
    created_at: datetime
    updated_at: datetime


class ModelStatus(StrEnum):
    TRAINING = "training"
    CANDIDATE = "candidate"
    PROMOTED = "promoted"
    RETIRED = "retired"
    FAILED = "failed"


class ModelTrainCreate(SQLModel):
    """A fine-tune an admin asks for: what to learn from, and from which version."""

    source: str = Field(
        max_length=2048,
        description="labelled images in REAL/ and FAKE/ folders: a folder the train workers can read, "
        "or s3://PREFIX for an object-store prefix of the service's bucket",
    )
    base: str | None = Field(
        default=None, max_length=64, description="the version to fine-tune (default: the promoted one)"
    )
    epochs: int | None = Field(default=None, ge=1, le=100, description="default: FAKESCOPE_MODELS_EPOCHS")
    command: str | None = Field(
        default=None, max_length=2048, description="the command line that asked, for the record"
    )


class ModelVersion(SQLModel, table=True):
    """A detector version in the registry (fakescope.service.models): its lineage, state and metrics.

    Its files live in the object store under ``models/<version>/``. At most one row is ``promoted``
    (a partial unique index); with none, the shipped checkpoint (``FAKESCOPE_CHECKPOINT``) answers.
    """

    __tablename__ = "model_versions"
    __table_args__ = (
        Index(
            "uq_model_versions_promoted",
            "status",
            unique=True,
            postgresql_where=text("status = 'promoted'"),
            sqlite_where=text("status = 'promoted'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    version: str = Field(max_length=64, unique=True)
    # None: the shipped checkpoint.
    base_version: str | None = Field(default=None, max_length=64)
    status: str = Field(default=ModelStatus.TRAINING, max_length=16)
    source: str = Field(max_length=2048)
    data_fingerprint: str | None = Field(default=None, max_length=64)
    recipe: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    command: str | None = Field(default=None, max_length=2048)
    requested_by: str = Field(max_length=255)
    # Training progress (epoch, epochs, loss) while it runs; the gate's comparison after.
    progress: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # The checkpoint's own model_version (the hash each scored item records).
    model_version: str | None = Field(default=None, max_length=255)
    # A candidate that also scores a share of live traffic, without answering (ShadowScore rows).
    shadowing: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    promoted_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class ModelVersionPublic(SQLModel):
    version: str
    base_version: str | None
    status: str
    source: str
    data_fingerprint: str | None
    recipe: dict[str, Any]
    command: str | None
    requested_by: str
    progress: dict[str, Any]
    metrics: dict[str, Any]
    model_version: str | None
    shadowing: bool
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    promoted_at: datetime | None
    shadow: dict[str, Any] | None = Field(
        default=None, description="how its shadow scores compare with the live answers (None: it never shadowed)"
    )


class ShadowScore(SQLModel, table=True):
    """A shadowing version's probability for one live-scored item, beside the live one; never answered."""

    __tablename__ = "shadow_scores"
    __table_args__ = (UniqueConstraint("version", "item_id", name="uq_shadow_scores_version_item"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    version: str = Field(max_length=64, index=True)
    item_id: uuid.UUID = Field(foreign_key="job_items.id", ondelete="CASCADE")
    live_version: str | None = Field(default=None, max_length=255)
    live_probability: float
    fake_probability: float
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
