"""Queue ``classify``: one task per chunk of images; batched inference, GradCAM grids kept for overlays."""

from __future__ import annotations

from typing import Any

from celery import Task

from fakescope.service.processing import classify_chunk, release_items
from fakescope.settings import get_settings
from fakescope.tasks import TaskName
from workers import models, runtime


@runtime.chunk_task(TaskName.CLASSIFY, runtime.CLASSIFY)
def classify(self: Task, job_id: str, item_ids: list[str], count_start: bool = True) -> int:
    def body() -> int:
        with runtime.session() as session:
            written = classify_chunk(
                session,
                runtime.store(),
                models.live_detector(),
                job_id=job_id,
                item_ids=item_ids,
                enqueue_explain=runtime.enqueuer().explain,
                batch_size=get_settings().batch_size,
                decode_threads=get_settings().decode_threads,
                max_deliveries=get_settings().max_deliveries,
                count_start=count_start,
                trust_anchors_pem=runtime.trust_anchors(),
                fetch=get_settings().fetch,
                enqueue_webhook=runtime.enqueuer().webhook,
                image_time_limit_s=get_settings().image_time_limit_s,
                on_started=runtime.hold_point(self.request.id, job_id, item_ids),
            )
            models.send_shadow(item_ids)
            return written

    def before_retry() -> dict[str, Any]:
        # A handled error is not a crash: its start must not count toward the poison limit. The start is
        # given back now, or, when the database is what failed, the retry skips counting its own.
        if not count_start:
            return {"count_start": False}
        try:
            with runtime.session() as session:
                release_items(session, item_ids=item_ids)
        except runtime.TRANSIENT:
            runtime.reset_db()
            return {"count_start": False}
        return {"count_start": True}

    with runtime.observed(job_id, item_ids):
        return runtime.run_chunk(self, runtime.CLASSIFY, job_id, item_ids, body, before_retry)
