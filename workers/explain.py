"""Queue ``explain``: artifacts and reasons for the images a job's classify tasks found fake."""

from __future__ import annotations

import logging

from celery import Task
from sqlalchemy.exc import OperationalError

from fakescope.service.processing import explain_chunk, fail_items
from fakescope.storage import StorageError
from fakescope.tasks import TaskName
from workers import runtime
from workers.celery_app import app

logger = logging.getLogger(__name__)

TRANSIENT = (StorageError, OperationalError)
MAX_RETRIES = 5


@app.task(name=TaskName.EXPLAIN.value, bind=True, max_retries=MAX_RETRIES, base=runtime.ChunkTask, explain_pool=True)
def explain(self: Task, job_id: str, item_ids: list[str]) -> int:
    with runtime.observed(job_id, item_ids):
        return _explain(self, job_id, item_ids)


def _explain(self: Task, job_id: str, item_ids: list[str]) -> int:
    try:
        with runtime.session() as session:
            return explain_chunk(
                session, runtime.store(), runtime.detector(), runtime.explainer(), job_id=job_id, item_ids=item_ids
            )
    except TRANSIENT as e:
        if self.request.retries < MAX_RETRIES:
            logger.warning("job %s: transient error, retrying: %s", job_id, e)
            raise self.retry(exc=e, countdown=min(60, 2**self.request.retries)) from e
        reason = f"explanation failed after {MAX_RETRIES} retries: {e}"
    except Exception as e:
        reason = f"explanation failed: {type(e).__name__}: {e}"
        runtime.reset_db()
        with runtime.session() as session:
            fail_items(session, job_id=job_id, item_ids=item_ids, reason=reason, explain=True)
        raise
    with runtime.session() as session:
        fail_items(session, job_id=job_id, item_ids=item_ids, reason=reason, explain=True)
    return 0
