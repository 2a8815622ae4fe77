"""Task names, payloads and the Celery configuration shared by the API (which sends) and the workers.

The API enqueues by name through :class:`Enqueuer` and never imports ``workers/``; every process
builds its Celery app with :func:`make_celery`, so the broker options (the Redis visibility timeout
above all) are the same wherever Celery reads them: workers, the API's producer and Flower.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from celery import Celery

from fakescope import fsbroker
from fakescope.settings import Settings

__all__ = ["DETECT_PRIORITY", "JOB_PRIORITY", "Enqueuer", "TaskName", "chunk_payload", "make_celery"]

# Message priorities on the classify queue. Redis has none of its own: kombu keeps one list per
# priority step (0, 3, 6, 9 by default; the queue's name, then name + separator + step) and a worker
# reads them in order, lowest number first. A synchronous check (POST /v1/detect) therefore waits
# only for the chunks the workers already hold, not for the backlog of every job before it.
DETECT_PRIORITY = 0
JOB_PRIORITY = 6


class TaskName(StrEnum):
    CLASSIFY = "fakescope.classify"
    EXPLAIN = "fakescope.explain"
    WEBHOOK = "fakescope.webhook"
    TRAIN = "fakescope.train"
    SHADOW = "fakescope.shadow"


def webhook_time_limit(settings: Settings) -> float:
    """A webhook task's hard limit: every attempt's connect, send and read are each bounded by the
    callback timeout, and this bounds a receiver that trickles its response a byte at a time."""
    return 3 * settings.callback.timeout_s + 10


def chunk_payload(job_id: uuid.UUID | str, item_ids: Sequence[uuid.UUID | str]) -> dict[str, Any]:
    """The JSON kwargs of both tasks: a job and some of its items, by id."""
    return {"job_id": str(job_id), "item_ids": [str(i) for i in item_ids]}


def make_celery(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """A Celery app on ``settings.broker``; results stay in Postgres, so there is no result backend."""
    if settings.broker_url is None:  # the embedded filesystem broker: tables under one lock, folders made
        fsbroker.install()
        for folder in settings.broker_folders:
            folder.mkdir(parents=True, exist_ok=True)
    app = Celery("fakescope", broker=settings.broker, include=list(include))
    options = settings.broker_transport_options
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # At-least-once delivery: a message is acknowledged only after its task returns, and one whose
        # worker died is handed to another worker. The task code makes the repeat harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Pool processes are replaced now and then, and when a task leaves one large: whatever a
        # hostile input left behind in it (an abandoned native read, fragmented memory) goes with it.
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_max_memory_per_child=(
            settings.worker_max_memory_per_child_mb * 1024 if settings.worker_max_memory_per_child_mb else None
        ),
        task_time_limit=settings.task_time_limit_s,
        # The soft limit leaves the task time to mark its items failed before the hard kill.
        task_soft_time_limit=max(1, settings.task_time_limit_s - min(30, max(1, settings.task_time_limit_s // 10))),
        broker_transport_options=options,
        result_backend_transport_options=options,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_routes={
            TaskName.CLASSIFY.value: {"queue": settings.queue_classify},
            TaskName.EXPLAIN.value: {"queue": settings.queue_explain},
            TaskName.WEBHOOK.value: {"queue": settings.queue_webhooks},
            TaskName.TRAIN.value: {"queue": settings.queue_train},
            # Shadow scoring runs beside fine-tunes, off the classify pool: the live answer never waits on it.
            TaskName.SHADOW.value: {"queue": settings.queue_train},
        },
        task_default_queue=settings.queue_classify,
    )
    return app


class Enqueuer:
    """Sends chunk tasks by name; the chunk size decides how many images one task classifies."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def _send(
        self,
        name: TaskName,
        queue: str,
        job_id: uuid.UUID,
        item_ids: Sequence[uuid.UUID],
        size: int,
        priority: int | None = None,
    ) -> int:
        sent = 0
        for start in range(0, len(item_ids), size):
            # Explicit None time limits: where the task is registered in the sender too (a classify worker
            # sending explain tasks), Celery would otherwise stamp the sender's limits into the message,
            # and those override the limits of the pool that runs it.
            self.app.send_task(
                name.value,
                kwargs=chunk_payload(job_id, item_ids[start : start + size]),
                queue=queue,
                time_limit=None,
                soft_time_limit=None,
                priority=priority,
            )
            sent += 1
        return sent

    def classify(self, job_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> int:
        s = self.settings
        return self._send(TaskName.CLASSIFY, s.queue_classify, job_id, item_ids, s.chunk_size, JOB_PRIORITY)

    def detect(self, job_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> int:
        """A synchronous check's image, ahead of queued job chunks (same queue and pool)."""
        s = self.settings
        return self._send(TaskName.CLASSIFY, s.queue_classify, job_id, item_ids, s.chunk_size, DETECT_PRIORITY)

    def explain(self, job_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> int:
        s = self.settings
        return self._send(TaskName.EXPLAIN, s.queue_explain, job_id, item_ids, s.explain_chunk_size)

    def webhook(self, job_id: uuid.UUID, countdown: float | None = None) -> None:
        """Asks the webhooks pool to deliver the job's webhook (the job row says which event)."""
        limit = webhook_time_limit(self.settings)
        self.app.send_task(
            TaskName.WEBHOOK.value,
            kwargs={"job_id": str(job_id)},
            queue=self.settings.queue_webhooks,
            countdown=countdown,
            time_limit=limit,
            soft_time_limit=limit - 5,
        )

    def train(self, version: str, epoch: int) -> None:
        """Asks the train pool for epoch ``epoch`` (from 0) of a registered fine-tune."""
        self.app.send_task(
            TaskName.TRAIN.value,
            kwargs={"version": version, "epoch": epoch},
            queue=self.settings.queue_train,
            time_limit=None,
            soft_time_limit=None,
        )

    def shadow(self, version: str, item_ids: Sequence[uuid.UUID | str]) -> None:
        """Asks the train pool to score a classified chunk's items with the shadowing ``version`` too."""
        self.app.send_task(
            TaskName.SHADOW.value,
            kwargs={"version": version, "item_ids": [str(i) for i in item_ids]},
            queue=self.settings.queue_train,
            time_limit=None,
            soft_time_limit=None,
        )
