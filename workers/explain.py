"""Queue ``explain``: artifacts and reasons for the images a job's classify tasks found fake."""

from __future__ import annotations

from celery import Task

from fakescope.service.explanation import explain_chunk
from fakescope.settings import get_settings
from fakescope.tasks import TaskName
from workers import models, runtime


@runtime.chunk_task(TaskName.EXPLAIN, runtime.EXPLAIN)
def explain(self: Task, job_id: str, item_ids: list[str]) -> int:
    def body() -> int:
        with runtime.session() as session:
            return explain_chunk(
                session,
                runtime.store(),
                # The promoted version, as the classify pool picks it up: after a promotion the
                # evidence comes from the model that now answers, not the shipped one.
                models.live_detector(),
                runtime.explainer(),
                job_id=job_id,
                item_ids=item_ids,
                enqueue_webhook=runtime.enqueuer().webhook,
                on_started=runtime.hold_point(self.request.id, job_id, item_ids),
                image_time_limit_s=get_settings().image_time_limit_s,
            )

    with runtime.observed(job_id, item_ids):
        return runtime.run_chunk(self, runtime.EXPLAIN, job_id, item_ids, body)
