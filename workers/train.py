"""Queue ``train``: one epoch of a registered fine-tune per task (fakescope.service.training)."""

from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from fakescope.service.shadow import shadow_chunk
from fakescope.service.training import fail_training, train_epoch
from fakescope.settings import get_settings
from fakescope.tasks import TaskName
from workers import models, runtime
from workers.celery_app import app

logger = logging.getLogger(__name__)


@app.task(name=TaskName.TRAIN.value, bind=True, max_retries=runtime.MAX_RETRIES)
def train(self: Task, version: str, epoch: int) -> str:
    """Late acknowledgement (the app's default) makes a killed worker's epoch come back to another."""

    def fail(reason: str) -> None:
        runtime.reset_db()
        with runtime.session() as session:
            fail_training(session, version=version, reason=reason)

    try:
        with runtime.session() as session:
            did = train_epoch(
                session,
                runtime.store(),
                get_settings(),
                version=version,
                epoch=epoch,
                enqueue_next=runtime.enqueuer().train,
                on_started=runtime.hold_point(self.request.id, version, [str(epoch)]),
            )
    except runtime.TRANSIENT as e:
        if self.request.retries < runtime.MAX_RETRIES:
            logger.warning("model %s epoch %s: transient error, retrying: %s", version, epoch + 1, e)
            runtime.reset_db()
            raise self.retry(exc=e, countdown=runtime.retry_countdown(self.request.retries)) from e
        fail(f"epoch {epoch + 1} failed after {runtime.MAX_RETRIES} retries: {e}")
        raise
    except SoftTimeLimitExceeded:
        fail(f"epoch {epoch + 1} exceeded the time limit of {get_settings().task_time_limit_s}s")
        raise
    except Exception as e:
        fail(f"epoch {epoch + 1} failed: {type(e).__name__}: {e}")
        raise
    logger.info("model %s: %s", version, did)
    return did


@app.task(
    name=TaskName.SHADOW.value,
    bind=True,
    max_retries=runtime.MAX_RETRIES,
    autoretry_for=runtime.TRANSIENT,
    retry_backoff=True,
    retry_jitter=True,
)
def shadow(self: Task, version: str, item_ids: list[str]) -> int:
    """Scores classified items with the shadowing candidate too; the live answers are already given."""
    with runtime.session() as session:
        return shadow_chunk(
            session,
            runtime.store(),
            models.detector_of(version),
            version=version,
            item_ids=item_ids,
            batch_size=get_settings().batch_size,
        )
