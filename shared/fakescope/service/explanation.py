"""What the explain pool does with a chunk of items the classify pool found fake: artifacts and
reasons, written in one statement per chunk (giving up on a chunk's explanations is
:func:`fakescope.service.jobs.fail_chunk`).

Safe to run twice on the same chunk: it only touches items still pending explanation.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from fakescope.db.models import ExplainStatus, JobItem, utcnow
from fakescope.observability import FAILURES, IMAGES, MODEL_SECONDS, failure_reason, pool
from fakescope.pipeline import classify_items
from fakescope.service import EnqueueWebhook
from fakescope.service.jobs import finish
from fakescope.service.originals import chunk_inputs
from fakescope.service.rows import uuids, write_rows
from fakescope.storage import ObjectStore

if TYPE_CHECKING:
    from fakescope.detector import Detector, RoutedDetector

__all__ = ["explain_chunk"]


def explain_chunk(
    session: Session,
    store: ObjectStore,
    detector: Detector | RoutedDetector,
    explainer: Any,
    *,
    job_id: str | uuid.UUID,
    item_ids: Sequence[str | uuid.UUID],
    enqueue_webhook: EnqueueWebhook | None = None,
    on_started: Callable[[], None] | None = None,
    image_time_limit_s: float | None = None,
) -> int:
    """Explains the chunk's items still pending explanation; returns how many it wrote. A job this
    finishes hands its webhook to ``enqueue_webhook``. ``on_started``: called once the items in hand
    are read, before any work (the tests' hold point). ``image_time_limit_s``: one image's decoding and
    provenance reading is stopped past this, and that image's explanation fails alone (None: no limit)."""
    from fakescope.explain import ExplainInput, explain_with_evidence

    jid = uuid.UUID(str(job_id))
    items = session.exec(
        select(JobItem)
        .where(col(JobItem.id).in_(uuids(item_ids)), JobItem.explain_status == ExplainStatus.PENDING)
        .order_by(col(JobItem.position))
    ).all()
    if not items:
        finish(session, job_id=jid, enqueue_webhook=enqueue_webhook)
        return 0
    if on_started is not None:
        on_started()
    results = list(
        classify_items(
            detector,
            chunk_inputs(store, items),
            overlays=False,
            keep_arrays=True,
            model_seconds=MODEL_SECONDS.labels(pool()).observe,
            image_time_limit_s=image_time_limit_s,
        )
    )
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
    written = write_rows(session, updates, col(JobItem.explain_status) == ExplainStatus.PENDING)
    session.commit()
    for it, r in zip(items, results, strict=True):
        IMAGES.labels(pool(), "done" if it.id in done else "failed").inc()
        if it.id not in done:
            FAILURES.labels(pool(), failure_reason(r.error)).inc()
    finish(session, job_id=jid, enqueue_webhook=enqueue_webhook)
    return written
