"""Jobs whose images the client uploads itself through presigned URLs (one per image, or one per tar
shard of up to 256 images), and their start once the images are there."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import update
from sqlmodel import Session, col, select

from fakescope.db.models import (
    SHARD_MAX_BYTES,
    ItemStatus,
    Job,
    JobItem,
    JobState,
    utcnow,
)
from fakescope.imageio import DEFAULT_MAX_BYTES
from fakescope.service import Enqueue, EnqueueWebhook
from fakescope.service.idempotency import JobRequest, new_job
from fakescope.service.jobs import JobStateError, finish
from fakescope.service.rows import batched, insert_items
from fakescope.storage import ObjectStore, StorageError, original_key, shard_key

__all__ = ["create_upload_job", "start_job"]

logger = logging.getLogger(__name__)

# HEAD requests at start run from a few threads: a job of thousands of per-image objects.
START_THREADS = 8


def create_upload_job(
    session: Session,
    store: ObjectStore,
    request: JobRequest,
    *,
    names: Sequence[str] | None = None,
    shards: Sequence[Sequence[tuple[str, int, int]]] | None = None,
    expires_s: int = 3600,
) -> tuple[Job, list[tuple[JobItem, str]], bool]:
    """A job waiting for its images: one item per image, and presigned PUT URLs.

    With ``names``: one URL per image, returned with its item. With ``shards`` (each a list of
    ``(name, offset, length)``, a tar's members): one URL per shard, returned with the shard's first
    item; every item of the shard points at its range of that one object, so the client makes one
    request per shard and a worker one ranged read per chunk.
    """
    if (names is None) == (shards is None):
        raise ValueError("give either names or shards")
    layout: dict[str, object] = (
        {"names": list(names)} if names is not None else {"shards": [list(s) for s in shards or []]}
    )
    fingerprint = request.fingerprint("uploads", **layout)
    job, created = new_job(session, request, state=JobState.AWAITING_UPLOAD, fingerprint=fingerprint)
    if created:
        rows = _waiting_items(job.id, names, shards)
        job.total = len(rows)
        insert_items(session, job_id=job.id, rows=[r.model_dump() for r in rows])
        session.add(job)
        session.commit()
        session.refresh(job)
    items = session.exec(select(JobItem).where(JobItem.job_id == job.id).order_by(col(JobItem.position))).all()
    return job, _upload_urls(store, items, expires_s), created


def _waiting_items(
    job_id: uuid.UUID, names: Sequence[str] | None, shards: Sequence[Sequence[tuple[str, int, int]]] | None
) -> list[JobItem]:
    """The job's items awaiting upload: an object each (``names``), or a range of a shard's object each."""
    waiting = ItemStatus.AWAITING_UPLOAD
    if names is not None:
        return [
            JobItem(job_id=job_id, position=i, name=n, object_key=original_key(job_id, i), status=waiting)
            for i, n in enumerate(names)
        ]
    members = [(shard_key(job_id, s), m) for s, shard in enumerate(shards or []) for m in shard]
    return [
        JobItem(
            job_id=job_id,
            position=i,
            name=name,
            object_key=key,
            object_offset=offset,
            object_length=length,
            status=waiting,
        )
        for i, (key, (name, offset, length)) in enumerate(members)
    ]


def _upload_urls(store: ObjectStore, items: Sequence[JobItem], expires_s: int) -> list[tuple[JobItem, str]]:
    """A presigned PUT per object: each item's own, or each shard's with its first item."""
    if items and items[0].object_offset is None:
        return [(it, store.presign_put(it.object_key, expires_s)) for it in items]
    firsts: dict[str, JobItem] = {}
    for it in items:
        firsts.setdefault(it.object_key, it)
    return [(it, store.presign_put(key, expires_s)) for key, it in firsts.items()]


def start_job(
    session: Session,
    store: ObjectStore,
    enqueue: Enqueue,
    *,
    job: Job,
    max_bytes: int = DEFAULT_MAX_BYTES,
    enqueue_webhook: EnqueueWebhook | None = None,
) -> Job:
    """Queues the uploaded items of a presigned job; an item whose object is missing fails as not
    uploaded, and one over ``max_bytes`` (a presigned PUT cannot be capped as it is sent) fails as too
    large and its object is deleted, so no worker ever reads it.

    The objects are checked first (a HEAD each), with nothing changed: an object-store error part-way
    (it propagates) leaves the job awaiting its start, and a retry starts it. Then the job's claim and
    every item's new state commit together, each conditional on the state it expects, so a cancel that
    landed meanwhile wins and is never undone. A job with nothing to queue finishes here and hands its
    webhook to ``enqueue_webhook``.
    """
    if job.state != JobState.AWAITING_UPLOAD:
        raise JobStateError("Job already started")
    items = session.exec(
        select(JobItem.id, JobItem.object_key, JobItem.object_offset, JobItem.object_length).where(
            JobItem.job_id == job.id, JobItem.status == ItemStatus.AWAITING_UPLOAD
        )
    ).all()
    keys = sorted({row[1] for row in items})  # a shard's items share one object: one HEAD for them all
    with ThreadPoolExecutor(START_THREADS, thread_name_prefix="start") as pool:
        size_of = dict(zip(keys, pool.map(store.size, keys), strict=True))
    queued, failed, doomed = _check_uploads(items, size_of, max_bytes)
    _claim(session, job, queued, failed)
    if doomed:
        try:
            store.delete(sorted(doomed))
        except StorageError:
            logger.warning("job %s: could not delete %s oversized uploads", job.id, len(doomed), exc_info=True)
    enqueue(job.id, queued)
    if not queued:
        finish(session, job_id=job.id, enqueue_webhook=enqueue_webhook)
    session.refresh(job)
    return job


def _check_uploads(
    items: Sequence[tuple[uuid.UUID, str, int | None, int | None]],
    size_of: dict[str, int | None],
    max_bytes: int,
) -> tuple[list[uuid.UUID], dict[str, list[uuid.UUID]], set[str]]:
    """Sorts the items by what their objects' sizes say: (queued, failed by reason, objects to delete)."""
    queued: list[uuid.UUID] = []
    failed: dict[str, list[uuid.UUID]] = {}  # reason: items
    doomed: set[str] = set()  # objects no worker may read: deleted once the job has started
    for item_id, key, offset, length in items:
        size = size_of[key]
        if offset is not None and size is not None and size > SHARD_MAX_BYTES:
            # The whole shard: a presigned PUT cannot cap its size as it is sent.
            failed.setdefault(f"shard is over the limit of {SHARD_MAX_BYTES} bytes", []).append(item_id)
            doomed.add(key)
        elif size is None or (offset is not None and offset + (length or 0) > size):
            failed.setdefault("image was not uploaded", []).append(item_id)  # or past the end of its shard
        elif (length or 0 if offset is not None else size) > max_bytes:
            failed.setdefault(f"file is over the limit of {max_bytes} bytes", []).append(item_id)
            if offset is None:
                doomed.add(key)
        else:
            queued.append(item_id)
    return queued, failed, doomed


def _claim(session: Session, job: Job, queued: list[uuid.UUID], failed: dict[str, list[uuid.UUID]]) -> None:
    """Commits the job's claim and its items' new states together, each conditional on the state it
    expects; raises :class:`JobStateError` (changing nothing) where a cancel or another start won."""
    claimed = session.exec(
        update(Job)
        .where(col(Job.id) == job.id, col(Job.state) == JobState.AWAITING_UPLOAD)
        .values(state=JobState.QUEUED)
    )
    if claimed.rowcount != 1:
        session.rollback()
        session.refresh(job)
        raise JobStateError("Job was cancelled" if job.state == JobState.CANCELLED else "Job already started")
    waiting = col(JobItem.status) == ItemStatus.AWAITING_UPLOAD
    for part in batched(queued):  # one transaction, in statements under the parameter limit
        session.exec(
            update(JobItem)
            .where(col(JobItem.id).in_(part), waiting)
            .values(status=ItemStatus.QUEUED, enqueued_at=utcnow())
        )
    for error, ids in failed.items():
        for part in batched(ids):
            session.exec(
                update(JobItem)
                .where(col(JobItem.id).in_(part), waiting)
                .values(status=ItemStatus.FAILED, error=error, finished_at=utcnow())
            )
    session.commit()
