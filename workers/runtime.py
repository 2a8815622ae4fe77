"""What a worker process loads once: settings, the database engine, the object store, the models.

Everything here is built lazily on first use, inside the pool's child process: the prefork parent
never touches CUDA, so each child (one per GPU, pinned with ``CUDA_VISIBLE_DEVICES``) gets a clean
context. Loading happens in the first task, not in ``worker_process_init``, which Celery kills
after a few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

from billiard.exceptions import TimeLimitExceeded
from celery import Task
from sqlmodel import Session

from fakescope.db.engine import get_engine
from fakescope.observability import IMAGES_PER_S, TASK_SECONDS, log_context, pool
from fakescope.service.processing import fail_items
from fakescope.settings import get_settings
from fakescope.storage import ObjectStore, get_store
from fakescope.tasks import Enqueuer

if TYPE_CHECKING:
    from fakescope.detector import Detector

logger = logging.getLogger(__name__)


def session() -> Session:
    return Session(get_engine(get_settings().sqlalchemy_url))


def reset_db() -> None:
    """Drops pooled connections: one interrupted mid-query (a time limit, a lost server) is unusable."""
    get_engine(get_settings().sqlalchemy_url).dispose()


@cache
def store() -> ObjectStore:
    return get_store(get_settings())


@cache
def enqueuer() -> Enqueuer:
    from workers.celery_app import app

    return Enqueuer(app, get_settings())


@cache
def detector() -> Detector:
    from fakescope.detector import Detector

    det = Detector.load(get_settings().checkpoint or None)
    logger.info("worker loaded detector %s", det.model_version)
    return det


@cache
def explainer() -> Any:
    from fakescope.explain import load_explainer

    return load_explainer(get_settings().explain_backend or None)


@contextlib.contextmanager
def observed(job_id: str, item_ids: list[str]) -> Iterator[None]:
    """Tags the task's log lines with its job and items, and times it for the metrics."""
    t0 = time.perf_counter()
    with log_context(job_id=job_id, item_ids=item_ids):
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            TASK_SECONDS.labels(pool()).observe(seconds)
            IMAGES_PER_S.labels(pool()).set(len(item_ids) / max(seconds, 1e-9))


def retry_countdown(retries: int) -> float:
    """Seconds before retry number ``retries + 1``: exponential from the configured base, capped."""
    cfg = get_settings()
    return min(cfg.task_retry_backoff_max_s, cfg.task_retry_backoff_s * 2**retries)


def time_limit_reason(explain: bool) -> str:
    what = "explanation" if explain else "classification"
    return f"{what} exceeded the time limit of {get_settings().task_time_limit_s}s"


class ChunkFailed(Exception):
    """A chunk whose items were marked failed after its retries ran out: the task ends failed."""


class ChunkTask(Task):
    """A task over a chunk of a job's items that never leaves them waiting when it fails.

    Exceptions raised by the task body are handled there; ``on_failure`` also runs when the hard time
    limit kills the pool child (Celery calls it from the parent), where the body had no chance to.
    Marking items failed is conditional on them still waiting, so doing it twice is harmless.
    """

    explain_pool = False

    def on_failure(self, exc: Exception, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        if not isinstance(exc, TimeLimitExceeded):
            return
        # The soft limit usually got there first and the body failed the items; this covers a body that
        # could not finish doing so before the hard kill.
        reason = time_limit_reason(self.explain_pool)
        logger.error("task %s: %s", task_id, reason)
        reset_db()
        with session() as s:
            fail_items(
                s, job_id=kwargs["job_id"], item_ids=kwargs["item_ids"], reason=reason, explain=self.explain_pool
            )
