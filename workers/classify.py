"""Queue ``classify``: one task per chunk of images; batched inference and GradCAM overlays."""

from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fakescope.service.processing import classify_chunk, fail_items, release_items
from fakescope.settings import get_settings
from fakescope.storage import StorageError
from fakescope.tasks import TaskName
from workers import runtime
from workers.celery_app import app

logger = logging.getLogger(__name__)

# Object store or database unreachable: worth retrying; anything else fails the chunk's items.
TRANSIENT = (StorageError, OperationalError, InterfaceError, PoolTimeout)
MAX_RETRIES = get_settings().task_max_retries


@app.task(name=TaskName.CLASSIFY.value, bind=True, max_retries=MAX_RETRIES, base=runtime.ChunkTask)
def classify(self: Task, job_id: str, item_ids: list[str], count_start: bool = True) -> int:
    with runtime.observed(job_id, item_ids):
        return _classify(self, job_id, item_ids, count_start)


def _classify(self: Task, job_id: str, item_ids: list[str], count_start: bool) -> int:
    try:
        with runtime.session() as session:
            return classify_chunk(
                session,
                runtime.store(),
                runtime.detector(),
                job_id=job_id,
                item_ids=item_ids,
                enqueue_explain=runtime.enqueuer().explain,
                batch_size=get_settings().batch_size,
                max_deliveries=get_settings().max_deliveries,
                count_start=count_start,
            )
    except TRANSIENT as e:
        if self.request.retries < MAX_RETRIES:
            logger.warning("job %s: transient error, retrying: %s", job_id, e)
            runtime.reset_db()  # a connection the server dropped is no use to the retry
            # A handled error is not a crash: its start must not count toward the poison limit. The start is
            # given back now, or, when the database is what failed, the retry skips counting its own.
            released = True
            if count_start:
                try:
                    with runtime.session() as session:
                        release_items(session, item_ids=item_ids)
                except TRANSIENT:
                    runtime.reset_db()
                    released = False
            raise self.retry(
                exc=e,
                countdown=runtime.retry_countdown(self.request.retries),
                kwargs={"job_id": job_id, "item_ids": item_ids, "count_start": released},
            ) from e
        reason = f"classification failed after {MAX_RETRIES} retries: {e}"
    except SoftTimeLimitExceeded:
        # Raised wherever the body was, a query included: a fresh connection records the failure.
        runtime.reset_db()
        with runtime.session() as session:
            fail_items(session, job_id=job_id, item_ids=item_ids, reason=runtime.time_limit_reason(False))
        raise
    except Exception as e:
        # The chunk's items must not stay queued forever: record why, then let Celery log the failure.
        reason = f"classification failed: {type(e).__name__}: {e}"
        runtime.reset_db()
        with runtime.session() as session:
            fail_items(session, job_id=job_id, item_ids=item_ids, reason=reason)
        raise
    with runtime.session() as session:
        fail_items(session, job_id=job_id, item_ids=item_ids, reason=reason)
    # Recorded as a failure (Flower, task events), not a success that wrote nothing.
    raise runtime.ChunkFailed(reason)
