"""Jobs and their items once they exist: progress, results, cancel, finish, retention.

Creating jobs (uploads, presigned URLs, the start of a presigned job) is fakescope.service.uploads.

All state lives in the database. Item rows change only through conditional updates (``WHERE status =
'queued'``), which is what makes a task that runs twice, or a cancel racing a worker, harmless.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import overload

from sqlalchemy import case, delete, func, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from fakescope.answers import AnswerEntry
from fakescope.db.models import (
    ExplainStatus,
    ItemStatus,
    Job,
    JobCounts,
    JobItem,
    JobPublic,
    JobState,
    WebhookDelivery,
    utcnow,
)
from fakescope.result import Verdict
from fakescope.service import EnqueueWebhook, outbox
from fakescope.service.rows import batched, uuids
from fakescope.storage import ObjectStore

__all__ = [
    "JobStateError",
    "Stage",
    "cancel_job",
    "fail_chunk",
    "finalize_if_done",
    "finish",
    "get_job",
    "job_counts",
    "job_public",
    "jobs_counts",
    "list_failures",
    "list_jobs",
    "list_results",
    "purge_expired",
    "task_entries",
]

logger = logging.getLogger(__name__)


class JobStateError(RuntimeError):
    """The job is not in a state that allows the request (e.g. starting a job that already runs)."""


def get_job(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    """The job, or None when it does not exist or belongs to another tenant (the API says 404 for both)."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        return None
    return job


def job_counts(session: Session, *, job_id: uuid.UUID) -> JobCounts:
    return jobs_counts(session, job_ids=[job_id])[job_id]


def jobs_counts(session: Session, *, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JobCounts]:
    """The item counts of every job in ``job_ids`` in one grouped query (a page of 500 jobs is one query):
    by status, and the classified ones by verdict and out of domain."""
    pending = case((col(JobItem.explain_status) == ExplainStatus.PENDING, 1), else_=0)
    outside = case((col(JobItem.domain_score) > 1.0, 1), else_=0)
    rows = session.execute(  # SQLAlchemy's select and execute: sqlmodel's are typed for four columns at most
        sa_select(
            col(JobItem.job_id),
            col(JobItem.status),
            col(JobItem.prediction),
            func.count(),
            func.sum(pending),
            func.sum(outside),
        )
        .where(col(JobItem.job_id).in_(job_ids))
        .group_by(col(JobItem.job_id), col(JobItem.status), col(JobItem.prediction))
    ).all()
    by_job: dict[uuid.UUID, dict[str, int]] = {j: {} for j in job_ids}
    verdicts: dict[uuid.UUID, dict[str, int]] = {j: {} for j in job_ids}
    explain: dict[uuid.UUID, int] = dict.fromkeys(job_ids, 0)
    out_of_domain: dict[uuid.UUID, int] = dict.fromkeys(job_ids, 0)
    for job_id, item_status, prediction, n, n_pending, n_outside in rows:
        by_job[job_id][item_status] = by_job[job_id].get(item_status, 0) + n
        explain[job_id] += int(n_pending or 0)
        if item_status == ItemStatus.DONE:
            verdicts[job_id][prediction] = n
            out_of_domain[job_id] += int(n_outside or 0)
    return {
        j: JobCounts(
            total=sum(c.values()),
            queued=c.get(ItemStatus.QUEUED, 0),
            done=c.get(ItemStatus.DONE, 0),
            failed=c.get(ItemStatus.FAILED, 0),
            cancelled=c.get(ItemStatus.CANCELLED, 0),
            awaiting_upload=c.get(ItemStatus.AWAITING_UPLOAD, 0),
            explain_pending=explain[j],
            real=verdicts[j].get(Verdict.REAL, 0),
            fake=verdicts[j].get(Verdict.FAKE, 0),
            uncertain=verdicts[j].get(Verdict.UNCERTAIN, 0),
            out_of_domain=out_of_domain[j],
        )
        for j, c in by_job.items()
    }


@overload
def _aware(ts: datetime) -> datetime: ...
@overload
def _aware(ts: None) -> None: ...
@overload
def _aware(ts: datetime | None) -> datetime | None: ...
def _aware(ts: datetime | None) -> datetime | None:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def job_public(session: Session, job: Job, status_url: str, counts: JobCounts | None = None) -> JobPublic:
    """The job as the API shows it; ``counts`` when the caller already has them (a page of jobs)."""
    return JobPublic(
        id=job.id,
        state=JobState(job.state),
        explain=job.explain,
        overlays=job.overlays,
        callback_url=job.callback_url,
        fake_threshold=job.operating_point().fake_threshold,
        real_threshold=job.real_threshold,
        counts=counts if counts is not None else job_counts(session, job_id=job.id),
        status_url=status_url,
        created_at=_aware(job.created_at),
        started_at=_aware(job.started_at),
        finished_at=_aware(job.finished_at),
        error=job.error,
        callback_status=job.callback_status,
    )


def list_jobs(session: Session, *, tenant_id: uuid.UUID, offset: int = 0, limit: int = 50) -> tuple[list[Job], int]:
    count = session.exec(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)).one()
    jobs = session.exec(
        select(Job)
        .where(Job.tenant_id == tenant_id)
        .order_by(col(Job.created_at).desc(), col(Job.id))
        .offset(offset)
        .limit(limit)
    ).all()
    return list(jobs), count


def _items(
    session: Session, job_id: uuid.UUID, statuses: Sequence[str], offset: int, limit: int
) -> tuple[list[JobItem], int]:
    where = (col(JobItem.job_id) == job_id, col(JobItem.status).in_(statuses))
    count = session.exec(select(func.count()).select_from(JobItem).where(*where)).one()
    rows = session.exec(select(JobItem).where(*where).order_by(col(JobItem.position)).offset(offset).limit(limit)).all()
    return list(rows), count


def list_results(
    session: Session, *, job_id: uuid.UUID, offset: int = 0, limit: int = 100
) -> tuple[list[JobItem], int]:
    """Classified items, in upload order."""
    return _items(session, job_id, [ItemStatus.DONE], offset, limit)


def list_failures(
    session: Session, *, job_id: uuid.UUID, offset: int = 0, limit: int = 100
) -> tuple[list[JobItem], int]:
    """Items that could not be classified, with their ``error``."""
    return _items(session, job_id, [ItemStatus.FAILED], offset, limit)


def task_entries(session: Session, *, job_id: uuid.UUID) -> list[AnswerEntry]:
    rows = session.exec(
        select(JobItem.name, JobItem.prediction, JobItem.explanation, JobItem.status)
        .where(JobItem.job_id == job_id)
        .order_by(col(JobItem.position))
    ).all()
    return [AnswerEntry(name, pred if status == ItemStatus.DONE else None, expl) for name, pred, expl, status in rows]


def cancel_job(session: Session, *, job: Job, enqueue_webhook: EnqueueWebhook | None = None) -> Job:
    """Cancels a job that has not finished: its queued items are never classified (workers skip them).
    A job this call cancels hands its webhook, if any, to ``enqueue_webhook`` (:mod:`.outbox`)."""
    session.exec(
        update(JobItem)
        .where(
            col(JobItem.job_id) == job.id,
            col(JobItem.status).in_([ItemStatus.QUEUED, ItemStatus.AWAITING_UPLOAD]),
        )
        .values(status=ItemStatus.CANCELLED, finished_at=utcnow())
    )
    session.exec(
        update(JobItem)
        .where(col(JobItem.job_id) == job.id, col(JobItem.explain_status) == ExplainStatus.PENDING)
        .values(explain_status=ExplainStatus.NONE)
    )
    finished = [s.value for s in JobState if s.finished]
    res = session.exec(
        update(Job)
        .where(col(Job.id) == job.id, col(Job.state).not_in(finished))
        .values(state=JobState.CANCELLED, finished_at=utcnow(), **outbox.pending_values())
    )
    session.commit()
    session.refresh(job)
    if res.rowcount == 1:
        outbox.announce(enqueue_webhook, job)
    return job


def finalize_if_done(session: Session, *, job_id: uuid.UUID) -> Job | None:
    """Marks the job finished once no item is left to classify or explain.

    Returns the job when this call finished it, else None. The update is conditional on the job
    still running, so when two workers finish the last chunks at once exactly one of them wins
    (and sends the callback).
    """
    # Every chunk ends here: stop at the first unfinished item rather than count the whole job each time.
    unfinished = session.exec(
        select(JobItem.id)
        .where(
            col(JobItem.job_id) == job_id,
            or_(
                col(JobItem.status).in_([ItemStatus.QUEUED, ItemStatus.AWAITING_UPLOAD]),
                col(JobItem.explain_status) == ExplainStatus.PENDING,
            ),
        )
        .limit(1)
    ).first()
    if unfinished is not None:
        return None
    counts = job_counts(session, job_id=job_id)
    if counts.queued or counts.awaiting_upload or counts.explain_pending:
        return None
    if counts.failed == 0:
        state = JobState.SUCCEEDED
    elif counts.done == 0:
        state = JobState.FAILED
    else:
        state = JobState.PARTIALLY_SUCCEEDED
    res = session.exec(
        update(Job)
        .where(
            col(Job.id) == job_id,
            col(Job.state).in_([JobState.QUEUED, JobState.RUNNING]),
            col(Job.total) == counts.total,  # 0 while an upload is still adding items
        )
        # A job closed with an error (an upload cut short) did not answer everything it was sent.
        .values(
            state=case((col(Job.error).is_(None), state), else_=JobState.PARTIALLY_SUCCEEDED)
            if state == JobState.SUCCEEDED
            else state,
            finished_at=utcnow(),
            **outbox.pending_values(),
        )
    )
    session.commit()
    if res.rowcount != 1:
        return None
    job = session.get(Job, job_id)
    if job is not None:
        session.refresh(job)
        logger.info("job %s finished: %s (%s done, %s failed)", job_id, state, counts.done, counts.failed)
    return job


def finish(session: Session, *, job_id: uuid.UUID, enqueue_webhook: EnqueueWebhook | None = None) -> Job | None:
    """Finalizes the job if this was its last work; its webhook, if any, goes to ``enqueue_webhook``
    (None: it waits in the outbox for the sweeper)."""
    job = finalize_if_done(session, job_id=job_id)
    if job is not None:
        outbox.announce(enqueue_webhook, job)
    return job


class Stage(StrEnum):
    """What a worker pool does to an item; the value names it in failure reasons."""

    CLASSIFICATION = "classification"
    EXPLANATION = "explanation"


def fail_chunk(
    session: Session,
    *,
    stage: Stage,
    job_id: str | uuid.UUID,
    item_ids: Sequence[str | uuid.UUID],
    reason: str,
    enqueue_webhook: EnqueueWebhook | None = None,
) -> int:
    """Marks the chunk's items still waiting for ``stage`` failed with ``reason`` (a task gave up on
    them), then finalizes the job; returns how many it marked. Classification fails the items;
    explanation fails only their explanations, and their verdicts stand."""
    if stage is Stage.CLASSIFICATION:
        waiting = col(JobItem.status) == ItemStatus.QUEUED
        values = {"status": ItemStatus.FAILED, "error": reason, "finished_at": utcnow()}
    else:
        waiting = col(JobItem.explain_status) == ExplainStatus.PENDING
        values = {"explain_status": ExplainStatus.FAILED, "explain_error": reason, "explained_at": utcnow()}
    res = session.exec(update(JobItem).where(col(JobItem.id).in_(uuids(item_ids)), waiting).values(values))
    session.commit()
    finish(session, job_id=uuid.UUID(str(job_id)), enqueue_webhook=enqueue_webhook)
    return res.rowcount


def purge_expired(session: Session, store: ObjectStore, *, older_than_s: float, limit: int = 100) -> tuple[int, int]:
    """Deletes finished jobs that finished over ``older_than_s`` ago: their rows (items, webhook
    deliveries) and the objects only they use. An original or overlay that a newer job still points
    at (the content-hash deduplication and the result cache share them) is kept. Objects go first,
    so a crash in between leaves rows pointing at nothing rather than objects nothing points at.

    Returns ``(jobs, objects)`` deleted.
    """
    finished = [st.value for st in JobState if st.finished]
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    job_ids = session.exec(
        select(Job.id).where(col(Job.state).in_(finished), col(Job.finished_at) < cutoff).limit(limit)
    ).all()
    if not job_ids:
        return 0, 0
    keys: set[str] = set()
    for original, overlay in session.exec(
        select(JobItem.object_key, JobItem.overlay_key).where(col(JobItem.job_id).in_(job_ids))
    ).all():
        keys.add(original)
        if overlay:
            keys.add(overlay)
    others = col(JobItem.job_id).not_in(job_ids)
    shared: set[str | None] = set()
    for part in batched(sorted(keys)):  # expired jobs can hold more objects than one statement's parameters
        shared |= set(session.exec(select(JobItem.object_key).where(others, col(JobItem.object_key).in_(part))).all())
        shared |= set(session.exec(select(JobItem.overlay_key).where(others, col(JobItem.overlay_key).in_(part))).all())
    doomed = sorted(keys - shared)
    for start in range(0, len(doomed), 1000):
        store.delete(doomed[start : start + 1000])
    session.exec(delete(WebhookDelivery).where(col(WebhookDelivery.job_id).in_(job_ids)))
    session.exec(delete(JobItem).where(col(JobItem.job_id).in_(job_ids)))
    session.exec(delete(Job).where(col(Job.id).in_(job_ids)))
    session.commit()
    logger.info("retention: deleted %s jobs and %s objects finished before %s", len(job_ids), len(doomed), cutoff)
    return len(job_ids), len(doomed)
