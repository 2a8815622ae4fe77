"""Jobs of images a caller names by URL: one item per URL, queued at once; the workers fetch them.

The API never opens a connection on a URL a caller sends (it has no business on the network the
workers classify from, and a slow host must not hold an API thread): it stores the URLs and enqueues
the items; a worker fetches each through the outbound guard (:mod:`fakescope.fetch`), stores the
bytes as the item's original and classifies them, and a URL that fails fails its own item.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session

from fakescope.db.models import Job, JobItem, JobState, storable_name
from fakescope.service import Enqueue, EnqueueWebhook
from fakescope.service.idempotency import JobRequest, new_job
from fakescope.service.jobs import finish
from fakescope.service.rows import insert_items
from fakescope.storage import original_key

__all__ = ["create_url_job"]


def create_url_job(
    session: Session,
    enqueue: Enqueue,
    request: JobRequest,
    *,
    urls: Sequence[str],
    enqueue_webhook: EnqueueWebhook | None = None,
) -> tuple[Job, bool]:
    """A queued job with one item per URL (named by its URL), its chunks enqueued; returns the job
    and whether it was created (False: the idempotency key's earlier job). A job the workers
    finished before this returns hands its webhook to ``enqueue_webhook``."""
    fingerprint = request.fingerprint("urls", urls=list(urls))
    job, created = new_job(session, request, state=JobState.QUEUED, fingerprint=fingerprint)
    if not created:
        return job, False
    rows = [
        JobItem(job_id=job.id, position=i, name=storable_name(url), object_key=original_key(job.id, i), source_url=url)
        for i, url in enumerate(urls)
    ]
    ids = [r.id for r in rows]
    job.total = len(rows)
    insert_items(session, job_id=job.id, rows=[r.model_dump() for r in rows])
    session.add(job)
    session.commit()
    enqueue(job.id, ids)
    finish(session, job_id=job.id, enqueue_webhook=enqueue_webhook)  # the workers may have finished already
    session.refresh(job)
    return job, True
