"""Queue ``explain``: artifacts and reasons for the images a job's classify tasks found fake."""

from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fakescope.service.processing import explain_chunk, fail_items
from fakescope.settings import get_settings
from fakescope.storage import StorageError
from fakescope.tasks import TaskName
from workers import runtime
from workers.celery_app import app

logger = logging.getLogger(__name__)

TRANSIENT = (StorageError, OperationalError, InterfaceError, PoolTimeout)
MAX_RETRIES = get_settings().task_max_retries


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
            runtime.reset_db()  # a connection the server dropped is no use to the retry
            raise self.retry(exc=e, countdown=runtime.retry_countdown(self.request.retries)) from e
        reason = f"explanation failed after {MAX_RETRIES} retries: {e}"
    except SoftTimeLimitExceeded:
        # Raised wherever the body was, a query included: a fresh connection records the failure.
        runtime.reset_db()
        with runtime.session() as session:
            fail_items(session, job_id=job_id, item_ids=item_ids, reason=runtime.time_limit_reason(True), explain=True)
        raise
    except Exception as e:
        reason = f"explanation failed: {type(e).__name__}: {e}"
        runtime.reset_db()
        with runtime.session() as session:
            fail_items(session, job_id=job_id, item_ids=item_ids, reason=reason, explain=True)
        raise
    with runtime.session() as session:
        fail_items(session, job_id=job_id, item_ids=item_ids, reason=reason, explain=True)
    # Recorded as a failure (Flower, task events), not a success that wrote nothing.
    raise runtime.ChunkFailed(reason)
