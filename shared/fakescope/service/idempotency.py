"""Idempotency keys: a key names the first request made with it; a retry of that request gets the same
job, and a reuse with another request (another route, other files or options) is refused, as payment
APIs refuse it."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from fakescope.db.models import (
    Job,
    JobState,
)
from fakescope.result import OperatingPoint

__all__ = ["IdempotencyConflict", "JobRequest", "new_job", "request_fingerprint"]


class IdempotencyConflict(ValueError):
    """The idempotency key was first used with another request (another route, other files or options)."""


def request_fingerprint(route: str, **request: object) -> str:
    """SHA-256 of ``route`` and the request's canonical JSON: what an idempotency key is bound to."""
    return hashlib.sha256(json.dumps({"route": route, **request}, sort_keys=True, default=str).encode()).hexdigest()


def _by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str | None) -> Job | None:
    if key is None:
        return None
    return session.exec(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)).first()


def _replayed(session: Session, tenant_id: uuid.UUID, key: str | None, fingerprint: str | None) -> Job | None:
    existing = _by_idempotency_key(session, tenant_id, key)
    if existing is not None and fingerprint and existing.request_fingerprint not in (None, fingerprint):
        raise IdempotencyConflict("Idempotency-Key was already used with a different request")
    return existing


@dataclass(frozen=True)
class JobRequest:
    """What a caller asks of a new job besides its images, the same for every way of making one (a
    multipart upload, presigned uploads, URLs, a single detect): the job row's options, and with its
    images' layout what an idempotency key is bound to."""

    tenant_id: uuid.UUID
    explain: bool = False
    overlays: bool = True
    callback_url: str | None = None
    idempotency_key: str | None = None
    point: OperatingPoint = field(default_factory=OperatingPoint)

    def fingerprint(self, route: str, **layout: object) -> str:
        """:func:`request_fingerprint` of ``route``, the images' ``layout`` and these options."""
        options = {"explain": self.explain, "overlays": self.overlays, "callback_url": self.callback_url}
        return request_fingerprint(route, **layout, **options, point=self.point.model_dump())


def new_job(
    session: Session, request: JobRequest, *, state: JobState, fingerprint: str | None = None
) -> tuple[Job, bool]:
    """Inserts the job row first, so a concurrent retry with the same key finds it (or loses the race).

    Raises:
        IdempotencyConflict: the key's job was made by a request with another ``fingerprint``.
    """
    tenant_id, idempotency_key = request.tenant_id, request.idempotency_key
    existing = _replayed(session, tenant_id, idempotency_key, fingerprint)
    if existing is not None:
        return existing, False
    job = Job(
        tenant_id=tenant_id,
        state=state,
        explain=request.explain,
        overlays=request.overlays,
        callback_url=request.callback_url,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint if idempotency_key else None,
        fake_threshold=request.point.fake_threshold,
        real_threshold=request.point.real_threshold,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = _replayed(session, tenant_id, idempotency_key, fingerprint)
        if existing is None:
            raise
        return existing, False
    session.refresh(job)
    return job, True
