"""What a worker process loads once: settings, the database engine, the object store, the models.

Everything here is built lazily on first use, inside the pool's child process: the prefork parent
never touches CUDA, so each child (one per GPU, pinned with ``CUDA_VISIBLE_DEVICES``) gets a clean
context. Loading happens in the first task, not in ``worker_process_init``, which Celery kills
after a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from billiard.exceptions import TimeLimitExceeded
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from fakescope.db.engine import get_engine, new_session
from fakescope.observability import IMAGES_PER_S, TASK_SECONDS, log_context, pool
from fakescope.service.jobs import Stage, fail_chunk
from fakescope.settings import get_settings
from fakescope.storage import ObjectStore, StorageError, get_store
from fakescope.tasks import Enqueuer, TaskName
from workers.celery_app import app

if TYPE_CHECKING:
    from fakescope.detector import Detector, RoutedDetector

logger = logging.getLogger(__name__)


def session() -> Session:
    return new_session(get_settings().sqlalchemy_url)


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
def detector() -> Detector | RoutedDetector:
    from fakescope.detector import load_detector

    det = load_detector(get_settings().checkpoint or None)
    logger.info("worker loaded detector %s", det.model_version)
    return det


@cache
def trust_anchors() -> str | None:
    """The operator's C2PA trust list (``FAKESCOPE_C2PA_TRUST_ANCHORS``), read once; None without one."""
    path = get_settings().c2pa_trust_anchors
    return path.read_text() if path else None


@cache
def explainer() -> Any:
    from fakescope.explain import load_explainer

    return load_explainer(config=get_settings().explain)


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


HOLD_MAX_S = 120.0


def hold_point(task_id: str, job_id: str, item_ids: list[str]) -> Callable[[], None] | None:
    """The tests' hold point (``FAKESCOPE_TEST_HOLD_DIR``; None when unset, as in production).

    What a chunk task calls once its start is committed: it writes ``<dir>/<task_id>.reached`` (the job
    and items, as JSON) and waits for ``<dir>/<task_id>.release`` or ``<dir>/release``, at most
    ``HOLD_MAX_S`` (and the task's time limit). A fault test then kills the worker while it provably
    holds a started chunk, or lets it go on, instead of racing it with signals.
    """
    folder = get_settings().test_hold_dir
    if folder is None:
        return None

    def hold() -> None:
        partial = folder / f"{task_id}.partial"
        partial.write_text(json.dumps({"job_id": job_id, "item_ids": item_ids}))
        partial.rename(folder / f"{task_id}.reached")  # whole when the test sees it
        deadline = time.monotonic() + HOLD_MAX_S
        while not ((folder / f"{task_id}.release").exists() or (folder / "release").exists()):
            if time.monotonic() > deadline:
                logger.warning("task %s: not released after %s s; going on", task_id, HOLD_MAX_S)
                return
            time.sleep(0.01)

    return hold


# Object store or database unreachable: worth retrying; anything else fails the chunk's items.
TRANSIENT = (StorageError, OperationalError, InterfaceError, PoolTimeout)
MAX_RETRIES = get_settings().task_max_retries


@dataclass(frozen=True)
class Work:
    """What a pool does to a chunk, for the error policy: its name in reasons, and how it gives up
    on the chunk's items (classification fails them; explanation fails only their explanations)."""

    stage: Stage

    def time_limit_reason(self) -> str:
        return f"{self.stage} exceeded the time limit of {get_settings().task_time_limit_s}s"

    def give_up(self, job_id: str, item_ids: list[str], reason: str) -> None:
        with session() as s:
            fail_chunk(
                s, stage=self.stage, job_id=job_id, item_ids=item_ids, reason=reason, enqueue_webhook=enqueuer().webhook
            )


CLASSIFY = Work(Stage.CLASSIFICATION)
EXPLAIN = Work(Stage.EXPLANATION)


class ChunkFailed(Exception):
    """A chunk whose items were marked failed after its retries ran out: the task ends failed."""


def run_chunk(
    task: Task,
    work: Work,
    job_id: str,
    item_ids: list[str],
    body: Callable[[], int],
    before_retry: Callable[[], dict[str, Any]] | None = None,
) -> int:
    """Runs a chunk task's ``body`` under the one error policy both pools share.

    A transient error (object store or database unreachable) is retried with backoff, up to
    ``MAX_RETRIES`` (``before_retry`` may undo what the attempt counted and add to the retry's
    arguments); then, and after the soft time limit or any other error, the chunk's items fail with
    the reason, and the task ends failed (Flower and task events show it), never a silent success.
    """
    try:
        return body()
    except TRANSIENT as e:
        if task.request.retries < MAX_RETRIES:
            logger.warning("job %s: transient error, retrying: %s", job_id, e)
            reset_db()  # a connection the server dropped is no use to the retry
            extra = before_retry() if before_retry is not None else {}
            raise task.retry(
                exc=e,
                countdown=retry_countdown(task.request.retries),
                kwargs={"job_id": job_id, "item_ids": item_ids, **extra},
            ) from e
        reason = f"{work.stage} failed after {MAX_RETRIES} retries: {e}"
    except SoftTimeLimitExceeded:
        # Raised wherever the body was, a query included: a fresh connection records the failure.
        reset_db()
        work.give_up(job_id, item_ids, work.time_limit_reason())
        raise
    except Exception as e:
        # The chunk's items must not stay waiting forever: record why, then let Celery log the failure.
        reset_db()
        work.give_up(job_id, item_ids, f"{work.stage} failed: {type(e).__name__}: {e}")
        raise
    work.give_up(job_id, item_ids, reason)
    raise ChunkFailed(reason)


class ChunkTask(Task):
    """A task over a chunk of a job's items that never leaves them waiting when it fails.

    Exceptions raised by the task body are handled there (:func:`run_chunk`); ``on_failure`` also
    runs when the hard time limit kills the pool child (Celery calls it from the parent), where the
    body had no chance to. Giving up on items is conditional on them still waiting, so doing it twice
    is harmless. ``work``: what the task does, set by each task.
    """

    work: Work = CLASSIFY

    def on_failure(self, exc: Exception, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        if not isinstance(exc, TimeLimitExceeded):
            return
        # The soft limit usually got there first and the body failed the items; this covers a body that
        # could not finish doing so before the hard kill.
        reason = self.work.time_limit_reason()
        logger.error("task %s: %s", task_id, reason)
        reset_db()
        self.work.give_up(kwargs["job_id"], kwargs["item_ids"], reason)


def chunk_task(name: TaskName, work: Work) -> Callable[[Callable[..., int]], Any]:
    """The decorator of a chunk pool's task: bound, retried up to ``MAX_RETRIES`` (:func:`run_chunk`
    decides when), and giving up on its items through :class:`ChunkTask` when it dies."""
    return app.task(name=name.value, bind=True, max_retries=MAX_RETRIES, base=ChunkTask, work=work)
