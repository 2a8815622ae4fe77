"""Queue ``webhooks``: one delivery attempt per task, retried as a new task after a backoff.

The pool holds no model and sleeps nowhere: an attempt is bounded by the callback timeout (connect,
send, read) and the task's hard time limit (a receiver that trickles its answer), and a slow or dead
receiver only ever occupies this pool, never a request or a classify worker.
"""

from __future__ import annotations

import logging
import uuid

from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fakescope.service.webhooks import attempt_delivery
from fakescope.settings import get_settings
from fakescope.tasks import TaskName
from workers import runtime
from workers.celery_app import app

logger = logging.getLogger(__name__)

MAX_DB_RETRIES = get_settings().task_max_retries


@app.task(name=TaskName.WEBHOOK.value, bind=True, max_retries=None)
def webhook(self: Task, job_id: str) -> str | None:
    """Delivers ``job_id``'s pending webhook once; the outcome, or None when nothing was pending."""
    try:
        with runtime.session() as session:
            attempt = attempt_delivery(session, job_id=uuid.UUID(job_id), settings=get_settings())
    except (OperationalError, InterfaceError, PoolTimeout) as e:
        # The database is down: the webhook stays pending (the sweeper re-sends it in any case).
        runtime.reset_db()
        if self.request.retries >= MAX_DB_RETRIES:
            raise
        raise self.retry(exc=e, countdown=runtime.retry_countdown(self.request.retries), max_retries=None) from e
    if attempt is None:
        return None
    if attempt.retry_in is not None:
        runtime.enqueuer().webhook(uuid.UUID(job_id), countdown=attempt.retry_in)
    return attempt.outcome
