"""What the worker pools do with a chunk of items: classify (keeping GradCAM grids) and explain.

A classified item keeps its GradCAM grid, not an overlay PNG: the API draws the overlay the first
time someone asks for it (fakescope.service.overlays), so no worker encodes or stores one for nothing.

Both functions are safe to run twice on the same chunk: they only touch items still waiting for
them (``status = 'queued'`` / ``explain_status = 'pending'``), objects have fixed keys, and the row
updates are conditional, so a redelivered task writes each result once. This module imports the
detection core (torch) and is for the workers only.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, or_, update
from sqlmodel import Session, col, select

from fakescope.db.models import ExplainStatus, ItemStatus, Job, JobItem, JobState, utcnow
from fakescope.imageio import DEFAULT_MAX_BYTES, ImageError, InputItem
from fakescope.observability import FAILURES, IMAGES, failure_reason, log_context, pool
from fakescope.pipeline import classify_items
from fakescope.provenance import provenance_summary
from fakescope.service import Enqueue
from fakescope.service.jobs import finish
from fakescope.service.originals import read_original
from fakescope.storage import ObjectNotFound, ObjectStore, ObjectTooLarge

if TYPE_CHECKING:
    from fakescope.detector import Detector

__all__ = [
    "cached_results",
    "chunk_inputs",
    "classify_chunk",
    "explain_chunk",
    "fail_explanations",
    "fail_items",
    "release_items",
    "store_input",
]

logger = logging.getLogger(__name__)


def store_input(store: ObjectStore, item: JobItem, max_bytes: int | None = None) -> InputItem:
    """The item's original, read from the object store when the pipeline asks for it, never more
    than ``max_bytes`` of it (default: the per-image limit; a presigned upload can be any size)."""
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes

    def read() -> bytes:
        try:
            return read_original(store, item, limit)
        except ObjectNotFound:
            raise ImageError("original image is missing from object storage") from None
        except ObjectTooLarge:
            raise ImageError(f"file is over the limit of {limit} bytes") from None

    return InputItem(item.name, read)


# Items of one shard closer than this are read with one ranged GET, the gap read and dropped.
MAX_SHARD_GAP = 1024 * 1024


def chunk_inputs(store: ObjectStore, items: Sequence[JobItem], max_bytes: int | None = None) -> list[InputItem]:
    """The originals of a chunk's items, with one ranged GET per run of neighbours in a shard (one
    request for a chunk of an upload window, where it was one per image); items stored whole (a
    presigned upload) are read one by one when the pipeline asks for them.

    A missing shard fails its items with the same reason a missing original does; an object store
    that cannot be reached raises (the task retries).
    """
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    data: dict[uuid.UUID, bytes | ImageError] = {}
    runs: dict[str, list[JobItem]] = {}
    for it in items:
        if it.object_offset is None or it.object_length is None:
            continue
        if it.object_length > limit:
            data[it.id] = ImageError(f"file is over the limit of {limit} bytes")
            continue
        runs.setdefault(it.object_key, []).append(it)
    for key, members in runs.items():
        members.sort(key=lambda i: i.object_offset or 0)
        run: list[JobItem] = []
        following: list[JobItem | None] = [*members, None]
        for nxt in following:
            if run and (nxt is None or (nxt.object_offset or 0) - _end(run[-1]) > MAX_SHARD_GAP):
                start = run[0].object_offset or 0
                try:
                    body = store.get_range(key, start, max(_end(i) for i in run) - start)
                except ObjectNotFound:
                    for i in run:
                        data[i.id] = ImageError("original image is missing from object storage")
                else:
                    for i in run:
                        off = (i.object_offset or 0) - start
                        data[i.id] = body[off : off + (i.object_length or 0)]
                run = []
            if nxt is not None:
                run.append(nxt)

    def from_chunk(it: JobItem) -> InputItem:
        got = data[it.id]

        def read() -> bytes:
            if isinstance(got, ImageError):
                raise got
            return got

        return InputItem(it.name, read)

    return [from_chunk(it) if it.id in data else store_input(store, it, max_bytes) for it in items]


def _end(item: JobItem) -> int:
    return (item.object_offset or 0) + (item.object_length or 0)


def _uuids(ids: Sequence[str | uuid.UUID]) -> list[uuid.UUID]:
    return [uuid.UUID(str(i)) for i in ids]


def _explain_status(job: Job, prediction: str | None) -> ExplainStatus:
    return ExplainStatus.PENDING if job.explain and prediction == "fake" else ExplainStatus.NONE


def _write_rows(session: Session, updates: Sequence[tuple[JobItem, dict[str, Any]]], still: Any) -> int:
    """Writes rows in one executemany per shape of row, each only where ``still`` holds (the state the
    write expects); returns how many rows changed.

    A cancel, or another delivery of this task that got here first, wins, and the result is dropped
    rather than written twice.
    """
    table = JobItem.__table__  # type: ignore[attr-defined]
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for it, values in updates:
        shapes.setdefault(tuple(sorted(values)), []).append({"b_id": it.id, **{f"b_{k}": v for k, v in values.items()}})
    written = 0
    for keys, rows in shapes.items():
        stmt = (
            table.update().where(table.c.id == bindparam("b_id"), still).values({k: bindparam(f"b_{k}") for k in keys})
        )
        written += session.connection().execute(stmt, rows).rowcount
    return written


def _write_results(session: Session, updates: Sequence[tuple[JobItem, dict[str, Any]]]) -> int:
    """The chunk's classification results, conditional on each item still being queued."""
    return _write_rows(session, updates, col(JobItem.status) == ItemStatus.QUEUED)


def cached_results(
    session: Session, *, tenant_id: uuid.UUID, model_version: str, sha256s: Sequence[str], overlays: bool = True
) -> dict[str, JobItem]:
    """This tenant's latest finished result for each of ``sha256s`` under ``model_version``.

    With ``overlays``, only results that have their overlay. Scoped to the tenant: whether another
    tenant ever sent the same bytes is not theirs to learn.
    """
    if not sha256s:
        return {}
    with_overlay = [or_(col(JobItem.cam_grid).is_not(None), col(JobItem.overlay_key).is_not(None))] if overlays else []
    rows = session.exec(
        select(JobItem)
        .join(Job, col(Job.id) == col(JobItem.job_id))
        .where(
            col(Job.tenant_id) == tenant_id,
            col(JobItem.sha256).in_(set(sha256s)),
            col(JobItem.model_version) == model_version,
            col(JobItem.status) == ItemStatus.DONE,
            *with_overlay,
        )
        .order_by(col(JobItem.finished_at))
    ).all()
    return {r.sha256: r for r in rows if r.sha256}


def classify_chunk(
    session: Session,
    store: ObjectStore,
    detector: Detector,
    *,
    job_id: str | uuid.UUID,
    item_ids: Sequence[str | uuid.UUID],
    enqueue_explain: Enqueue | None = None,
    batch_size: int = 64,
    max_deliveries: int = 3,
    count_start: bool = True,
    trust_anchors_pem: str | None = None,
) -> int:
    """Classifies the chunk's queued items and writes their results (with GradCAM grids, from which
    the API draws overlays on demand) in one statement per shape of row; returns how many it wrote.

    An item started more than ``max_deliveries`` times fails with that reason instead (poison work).
    ``count_start=False``: this run's start is already counted (a retry whose give-back failed).
    """
    jid = uuid.UUID(str(job_id))
    ids = _uuids(item_ids)
    session.exec(
        update(Job)
        .where(col(Job.id) == jid, col(Job.state) == JobState.QUEUED)
        .values(state=JobState.RUNNING, started_at=utcnow())
    )
    session.commit()
    job = session.get(Job, jid)
    if job is None:
        logger.warning("job %s is gone; dropping %s items", jid, len(ids))
        return 0
    started = utcnow()
    # Counted before any work: an image that kills the worker (a decoder crash, the OOM killer) is
    # redelivered with its count already raised, and past max_deliveries it fails with that reason
    # instead of taking down every worker it reaches. The start time is the sweeper's clock too.
    session.exec(
        update(JobItem)
        .where(col(JobItem.id).in_(ids), col(JobItem.status) == ItemStatus.QUEUED)
        .values(attempts=col(JobItem.attempts) + int(count_start), started_at=started)
    )
    poisoned = session.exec(
        update(JobItem)
        .where(
            col(JobItem.id).in_(ids),
            col(JobItem.status) == ItemStatus.QUEUED,
            col(JobItem.attempts) > max_deliveries,
        )
        .values(
            status=ItemStatus.FAILED,
            error=f"classification was started {max_deliveries} times without finishing; the image is not retried",
            finished_at=utcnow(),
        )
    ).rowcount
    session.commit()
    if poisoned:
        logger.error("job %s: %s items failed after %s deliveries", jid, poisoned, max_deliveries)
    items = session.exec(
        select(JobItem)
        .where(col(JobItem.id).in_(ids), JobItem.status == ItemStatus.QUEUED)
        .order_by(col(JobItem.position))
    ).all()
    hits = cached_results(
        session,
        tenant_id=job.tenant_id,
        model_version=detector.model_version,
        sha256s=[it.sha256 for it in items if it.sha256],
        overlays=job.overlays,
    )
    updates: list[tuple[JobItem, dict[str, Any]]] = []
    todo: list[JobItem] = []
    for it in items:
        hit = hits.get(it.sha256) if it.sha256 else None
        if hit is None:
            todo.append(it)
            continue
        # The same bytes, the same tenant, the same model: the earlier answer, overlay object included.
        updates.append((it, {
            "status": ItemStatus.DONE,
            "cached": True,
            "prediction": hit.prediction,
            "fake_probability": hit.fake_probability,
            "domain_score": hit.domain_score,
            "width": hit.width,
            "height": hit.height,
            "overlay_key": hit.overlay_key,
            "cam_grid": hit.cam_grid,
            "provenance": hit.provenance,
            "decided_by": hit.decided_by,
            "model_version": detector.model_version,
            "started_at": started,
            "finished_at": utcnow(),
            "duration_ms": 0.0,
            "explain_status": _explain_status(job, hit.prediction),
            "enqueued_at": utcnow(),
        }))  # fmt: skip
    t0 = time.perf_counter()
    inputs = chunk_inputs(store, todo)
    results = classify_items(
        detector,
        inputs,
        batch_size=batch_size,
        overlays=False,
        grids=job.overlays,
        trust_anchors_pem=trust_anchors_pem,
    )
    for it, res in zip(todo, results, strict=True):
        values: dict[str, Any] = {
            "started_at": started,
            "finished_at": utcnow(),
            "duration_ms": (time.perf_counter() - t0) * 1000.0,
            "model_version": detector.model_version,
        }
        t0 = time.perf_counter()
        if res.error is not None:
            values.update(status=ItemStatus.FAILED, error=res.error)
        else:
            values.update(
                status=ItemStatus.DONE,
                prediction=res.prediction,
                fake_probability=res.fake_probability,
                domain_score=res.domain_score,
                sha256=res.sha256,
                width=res.width,
                height=res.height,
                cam_grid=res.cam_grid,
                provenance=provenance_summary(res.provenance),
                decided_by=res.decided_by,
                explain_status=_explain_status(job, res.prediction),
                enqueued_at=utcnow(),  # the explain task, if any, is sent below
            )
        updates.append((it, values))
    written = _write_results(session, updates)
    session.commit()
    for it, values in updates:
        outcome = "cached" if values.get("cached") else str(values["status"])
        IMAGES.labels(pool(), outcome).inc()
        if values["status"] == ItemStatus.FAILED:
            FAILURES.labels(pool(), failure_reason(values.get("error"))).inc()
            with log_context(item_id=it.id):
                logger.info("image %r failed: %s", it.name, values.get("error"))
    if job.explain and enqueue_explain is not None:
        # Re-sent on every delivery of the chunk: if the first delivery died between committing and
        # enqueueing, the explanations would otherwise never be asked for. explain_chunk skips done ones.
        pending = session.exec(
            select(JobItem.id).where(col(JobItem.id).in_(ids), JobItem.explain_status == ExplainStatus.PENDING)
        ).all()
        if pending:
            enqueue_explain(jid, list(pending))
    finish(session, job_id=jid)
    logger.info("job %s: classified %s of %s items (%s from the cache)", jid, written, len(ids), len(items) - len(todo))
    return written


def explain_chunk(
    session: Session,
    store: ObjectStore,
    detector: Detector,
    explainer: Any,
    *,
    job_id: str | uuid.UUID,
    item_ids: Sequence[str | uuid.UUID],
) -> int:
    """Explains the chunk's items still pending explanation; returns how many it wrote."""
    from fakescope.explain import ExplainInput, explain_with_evidence

    jid = uuid.UUID(str(job_id))
    items = session.exec(
        select(JobItem)
        .where(col(JobItem.id).in_(_uuids(item_ids)), JobItem.explain_status == ExplainStatus.PENDING)
        .order_by(col(JobItem.position))
    ).all()
    if not items:
        finish(session, job_id=jid)
        return 0
    results = list(classify_items(detector, chunk_inputs(store, items), overlays=False, keep_arrays=True))
    good = [(it, r) for it, r in zip(items, results, strict=True) if r.error is None]
    explanations = explain_with_evidence(explainer, [ExplainInput.from_result(r) for _, r in good])
    done = dict(zip([it.id for it, _ in good], explanations, strict=True))
    updates: list[tuple[JobItem, dict[str, Any]]] = []
    for it, r in zip(items, results, strict=True):
        if it.id in done:
            reasons, evidence = done[it.id]
            expl = {str(k): str(v) for k, v in reasons.items()}
            values: dict[str, Any] = {
                "explain_status": ExplainStatus.DONE,
                "explanation": expl,
                "artifacts": list(expl),
                "evidence": evidence,
                "explain_error": None,
                "explained_at": utcnow(),
            }
        else:
            values = {
                "explain_status": ExplainStatus.FAILED,
                "explanation": None,
                "artifacts": None,
                "evidence": None,
                "explain_error": r.error,
                "explained_at": utcnow(),
            }
        updates.append((it, values))
    written = _write_rows(session, updates, col(JobItem.explain_status) == ExplainStatus.PENDING)
    session.commit()
    for it, r in zip(items, results, strict=True):
        IMAGES.labels(pool(), "done" if it.id in done else "failed").inc()
        if it.id not in done:
            FAILURES.labels(pool(), failure_reason(r.error)).inc()
    finish(session, job_id=jid)
    return written


def release_items(session: Session, *, item_ids: Sequence[str | uuid.UUID]) -> int:
    """Gives back the start a delivery counted (see ``classify_chunk``) when it ends in a transient
    error it will retry: only deliveries that died count toward ``max_deliveries``."""
    res = session.exec(
        update(JobItem)
        .where(
            col(JobItem.id).in_(_uuids(item_ids)),
            col(JobItem.status) == ItemStatus.QUEUED,
            col(JobItem.attempts) > 0,
        )
        .values(attempts=col(JobItem.attempts) - 1)
    )
    session.commit()
    return res.rowcount


def fail_items(session: Session, *, job_id: str | uuid.UUID, item_ids: Sequence[str | uuid.UUID], reason: str) -> int:
    """Marks the chunk's items still queued for classification failed with ``reason`` (a task gave up
    on them), then finalizes the job."""
    jid = uuid.UUID(str(job_id))
    res = session.exec(
        update(JobItem)
        .where(col(JobItem.id).in_(_uuids(item_ids)), col(JobItem.status) == ItemStatus.QUEUED)
        .values(status=ItemStatus.FAILED, error=reason, finished_at=utcnow())
    )
    session.commit()
    finish(session, job_id=jid)
    return res.rowcount


def fail_explanations(
    session: Session, *, job_id: str | uuid.UUID, item_ids: Sequence[str | uuid.UUID], reason: str
) -> int:
    """Marks the chunk's explanations still pending failed with ``reason``; their verdicts stand."""
    jid = uuid.UUID(str(job_id))
    res = session.exec(
        update(JobItem)
        .where(col(JobItem.id).in_(_uuids(item_ids)), col(JobItem.explain_status) == ExplainStatus.PENDING)
        .values(explain_status=ExplainStatus.FAILED, explain_error=reason, explained_at=utcnow())
    )
    session.commit()
    finish(session, job_id=jid)
    return res.rowcount
