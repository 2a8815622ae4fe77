"""What the classify pool does with a chunk of items: classify them, keeping GradCAM grids.

A classified item keeps its GradCAM grid, not an overlay PNG: the API draws the overlay the first
time someone asks for it (fakescope.service.overlays), so no worker encodes or stores one for nothing.

Safe to run twice on the same chunk: it only touches items still queued, and the row updates are
conditional, so a redelivered task writes each result once. The explain pool's counterpart is
fakescope.service.explanation. This module imports the detection core (torch): workers only.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from fakescope.db.models import ExplainStatus, ItemStatus, Job, JobItem, JobState, utcnow
from fakescope.observability import FAILURES, IMAGES, MODEL_SECONDS, failure_reason, log_context, pool
from fakescope.pipeline import ImageResult, classify_items
from fakescope.result import ResultContract
from fakescope.service import Enqueue, EnqueueWebhook
from fakescope.service.jobs import finish
from fakescope.service.originals import chunk_inputs
from fakescope.service.rows import uuids, write_rows
from fakescope.settings import FetchSettings
from fakescope.storage import ObjectStore

if TYPE_CHECKING:
    from fakescope.detector import Detector, RoutedDetector

__all__ = [
    "cached_results",
    "classify_chunk",
    "release_items",
]

logger = logging.getLogger(__name__)


def _explain_status(job: Job, prediction: str | None) -> ExplainStatus:
    return ExplainStatus.PENDING if job.explain and prediction == "fake" else ExplainStatus.NONE


def _write_results(session: Session, updates: Sequence[tuple[JobItem, dict[str, Any]]]) -> int:
    """The chunk's classification results, conditional on each item still being queued."""
    return write_rows(session, updates, col(JobItem.status) == ItemStatus.QUEUED)


def cached_results(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    model_versions: Sequence[str],
    sha256s: Sequence[str],
    overlays: bool = True,
) -> dict[str, JobItem]:
    """This tenant's latest finished result for each of ``sha256s`` under one of ``model_versions``
    (a routed detector's members: the same bytes always take the same route).

    With ``overlays``, only results that have their overlay. Scoped to the tenant: whether another
    tenant ever sent the same bytes is not theirs to learn.
    """
    if not sha256s:
        return {}
    with_overlay = [or_(col(JobItem.cam_grid).is_not(None), col(JobItem.overlay_key).is_not(None))] if overlays else []
    # The latest copy of each hash is chosen by the database: a tenant that sent the same bytes
    # thousands of times must not have every copy loaded for each chunk (the untrusted-input issue).
    latest = (
        select(
            col(JobItem.id).label("id"),
            func.row_number()
            .over(partition_by=col(JobItem.sha256), order_by=col(JobItem.finished_at).desc())
            .label("rank"),
        )
        .join(Job, col(Job.id) == col(JobItem.job_id))
        .where(
            col(Job.tenant_id) == tenant_id,
            col(JobItem.sha256).in_(set(sha256s)),
            col(JobItem.model_version).in_(list(model_versions)),
            col(JobItem.status) == ItemStatus.DONE,
            *with_overlay,
        )
        .subquery()
    )
    rows = session.exec(select(JobItem).join(latest, latest.c.id == col(JobItem.id)).where(latest.c.rank == 1)).all()
    return {r.sha256: r for r in rows if r.sha256}


def classify_chunk(
    session: Session,
    store: ObjectStore,
    detector: Detector | RoutedDetector,
    *,
    job_id: str | uuid.UUID,
    item_ids: Sequence[str | uuid.UUID],
    enqueue_explain: Enqueue | None = None,
    batch_size: int = 64,
    decode_threads: int | None = None,
    max_deliveries: int = 3,
    count_start: bool = True,
    trust_anchors_pem: str | None = None,
    fetch: FetchSettings | None = None,
    enqueue_webhook: EnqueueWebhook | None = None,
    image_time_limit_s: float | None = None,
    on_started: Callable[[], None] | None = None,
) -> int:
    """Classifies the chunk's queued items and writes their results (with GradCAM grids, from which
    the API draws overlays on demand) in one statement per shape of row; returns how many it wrote.

    An item started more than ``max_deliveries`` times fails with that reason instead (poison work).
    ``count_start=False``: this run's start is already counted (a retry whose give-back failed).
    ``decode_threads``: as :func:`fakescope.pipeline.classify_items` takes it (None: its choice).
    ``fetch``: how items named by URL are fetched (None: they fail, nothing is fetched).
    ``enqueue_webhook``: where a job this chunk finishes hands its webhook (None: the sweeper sends it).
    ``image_time_limit_s``: one image's decoding and provenance reading is stopped past this, and that
    image fails alone while the chunk goes on (None: only the task's own limit).
    ``on_started``: called once the chunk's start is committed, before any work (the tests' hold point).
    """
    jid = uuid.UUID(str(job_id))
    ids = uuids(item_ids)
    job = session.get(Job, jid)
    if job is None:
        logger.warning("job %s is gone; dropping %s items", jid, len(ids))
        session.rollback()
        return 0
    if job.state == JobState.QUEUED:  # its first chunk: the running state commits with the chunk's start
        session.exec(
            update(Job)
            .where(col(Job.id) == jid, col(Job.state) == JobState.QUEUED)
            .values(state=JobState.RUNNING, started_at=utcnow())
        )
    started = utcnow()
    items = _start_items(session, jid, ids, started, max_deliveries=max_deliveries, count_start=count_start)
    updates, todo = _from_cache(session, job, detector, items, started)
    session.commit()  # the start is counted before any work (see _start_items)
    if on_started is not None:
        on_started()
    results = classify_items(
        detector,
        chunk_inputs(store, todo, fetch=fetch),
        batch_size=batch_size,
        decode_threads=decode_threads,
        overlays=False,
        grids=job.overlays,
        trust_anchors_pem=trust_anchors_pem,
        model_seconds=MODEL_SECONDS.labels(pool()).observe,
        image_time_limit_s=image_time_limit_s,
    )
    updates += _result_rows(job, detector, todo, results, started)
    written = _write_results(session, updates)
    session.commit()
    _count_outcomes(updates)
    if job.explain and enqueue_explain is not None:
        # Re-sent on every delivery of the chunk: if the first delivery died between committing and
        # enqueueing, the explanations would otherwise never be asked for. explain_chunk skips done ones.
        pending = session.exec(
            select(JobItem.id).where(col(JobItem.id).in_(ids), JobItem.explain_status == ExplainStatus.PENDING)
        ).all()
        if pending:
            enqueue_explain(jid, list(pending))
    finish(session, job_id=jid, enqueue_webhook=enqueue_webhook)
    logger.info("job %s: classified %s of %s items (%s from the cache)", jid, written, len(ids), len(items) - len(todo))
    return written


def _start_items(
    session: Session,
    jid: uuid.UUID,
    ids: list[uuid.UUID],
    started: datetime,
    *,
    max_deliveries: int,
    count_start: bool,
) -> Sequence[JobItem]:
    """Counts this start of the chunk's queued items, fails those started too often, returns the rest.

    The caller commits the count before any work: an image that kills the worker (a decoder crash, the
    OOM killer) is redelivered with its count already raised, and past ``max_deliveries`` it fails with
    that reason instead of taking down every worker it reaches. The start time is the sweeper's clock too.
    """
    # One statement in the common case: the start is counted and the chunk's rows come back with it.
    started_items = session.scalars(
        update(JobItem)
        # By id and job: a task naming another job's item ids (a forged or stale message) starts none.
        .where(col(JobItem.id).in_(ids), col(JobItem.job_id) == jid, col(JobItem.status) == ItemStatus.QUEUED)
        .values(attempts=col(JobItem.attempts) + int(count_start), started_at=started)
        .returning(JobItem)
        .execution_options(synchronize_session=False)
    ).all()
    poisoned = [it.id for it in started_items if it.attempts > max_deliveries]
    if poisoned:
        session.exec(
            update(JobItem)
            .where(col(JobItem.id).in_(poisoned), col(JobItem.status) == ItemStatus.QUEUED)
            .values(
                status=ItemStatus.FAILED,
                error=f"classification was started {max_deliveries} times without finishing; the image is not retried",
                finished_at=utcnow(),
            )
        )
        logger.error("job %s: %s items failed after %s deliveries", jid, len(poisoned), max_deliveries)
    return sorted((it for it in started_items if it.attempts <= max_deliveries), key=lambda it: it.position)


def _from_cache(
    session: Session, job: Job, detector: Detector | RoutedDetector, items: Sequence[JobItem], started: datetime
) -> tuple[list[tuple[JobItem, dict[str, Any]]], list[JobItem]]:
    """The rows answered from this tenant's earlier results for the same bytes and model, and the
    items left to classify."""
    hits = cached_results(
        session,
        tenant_id=job.tenant_id,
        model_versions=detector.model_versions,
        sha256s=[it.sha256 for it in items if it.sha256],
        overlays=job.overlays,
    )
    updates: list[tuple[JobItem, dict[str, Any]]] = []
    todo: list[JobItem] = []
    # An earlier job's verdict was at its own operating point: only the probability carries over.
    point = job.operating_point()
    for it in items:
        hit = hits.get(it.sha256) if it.sha256 else None
        if hit is None:
            todo.append(it)
            continue
        # The same bytes, the same tenant, the same model: the earlier answer (every field of the result
        # contract), with what its overlay is drawn from.
        result = ResultContract.model_validate(hit).decided(point)
        updates.append((it, {
            **result.stored(),
            "status": ItemStatus.DONE,
            "cached": True,
            "overlay_key": hit.overlay_key,
            "cam_grid": hit.cam_grid,
            "started_at": started,
            "finished_at": utcnow(),
            "duration_ms": 0.0,
            "explain_status": _explain_status(job, result.prediction),
            "enqueued_at": utcnow(),
        }))  # fmt: skip
    return updates, todo


def _result_rows(
    job: Job,
    detector: Detector | RoutedDetector,
    todo: Sequence[JobItem],
    results: Iterable[ImageResult],
    started: datetime,
) -> list[tuple[JobItem, dict[str, Any]]]:
    """The row values of each classified item, in order, as the pipeline yields them."""
    rows: list[tuple[JobItem, dict[str, Any]]] = []
    version = detector.model_version  # a hash of the checkpoint's metadata: once a chunk, not once an image
    point = job.operating_point()
    t0 = time.perf_counter()
    for it, res in zip(todo, results, strict=True):
        values: dict[str, Any] = {
            "started_at": started,
            "finished_at": utcnow(),
            "duration_ms": (time.perf_counter() - t0) * 1000.0,
            "model_version": version,
        }
        t0 = time.perf_counter()
        if res.error is not None:
            values.update(status=ItemStatus.FAILED, error=res.error)
        else:
            result = res.contract().decided(point)
            values.update(
                result.stored(),
                status=ItemStatus.DONE,
                cam_grid=res.cam_grid,
                explain_status=_explain_status(job, result.prediction),
                enqueued_at=utcnow(),  # the explain task, if any, is sent by classify_chunk
            )
        rows.append((it, values))
    return rows


def _count_outcomes(updates: Sequence[tuple[JobItem, dict[str, Any]]]) -> None:
    for it, values in updates:
        outcome = "cached" if values.get("cached") else str(values["status"])
        IMAGES.labels(pool(), outcome).inc()
        if values["status"] == ItemStatus.FAILED:
            FAILURES.labels(pool(), failure_reason(values.get("error"))).inc()
            with log_context(item_id=it.id):
                logger.info("image %r failed: %s", it.name, values.get("error"))


def release_items(session: Session, *, item_ids: Sequence[str | uuid.UUID]) -> int:
    """Gives back the start a delivery counted (see ``classify_chunk``) when it ends in a transient
    error it will retry: only deliveries that died count toward ``max_deliveries``."""
    res = session.exec(
        update(JobItem)
        .where(
            col(JobItem.id).in_(uuids(item_ids)),
            col(JobItem.status) == ItemStatus.QUEUED,
            col(JobItem.attempts) > 0,
        )
        .values(attempts=col(JobItem.attempts) - 1)
    )
    session.commit()
    return res.rowcount
