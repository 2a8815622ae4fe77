"""The webhook outbox: a finishing job's promise to tell its receiver, and the hand-over to the webhooks pool.

The statement that finishes (or cancels, or fails) a job also sets its ``callback_status`` to
:data:`PENDING` (:func:`pending_values`): the state change and the promise commit together, so a crash
in between loses nothing. The process that committed it then hands the job to the webhooks queue
(:func:`announce`) through the :data:`~fakescope.service.EnqueueWebhook` its caller passed in, the
way chunks go out through an :data:`~fakescope.service.Enqueue`; without one, or when the broker
refuses, the webhook waits here until the sweeper re-sends it (:func:`resend_overdue`). Delivery
itself (the HTTP attempt, its signature and log) is :mod:`fakescope.service.webhooks`.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import case, func, update
from sqlmodel import Session, col, select

from fakescope.db.models import Job, WebhookDelivery, utcnow
from fakescope.service import EnqueueWebhook

__all__ = [
    "EVENT",
    "MAX_RESENDS",
    "PENDING",
    "RESENT",
    "announce",
    "delivery_id",
    "pending_values",
    "resend_overdue",
]

logger = logging.getLogger(__name__)

EVENT = "job.finished"
# jobs.callback_status while the webhook waits in the outbox; afterwards the last attempt's outcome.
PENDING = "pending"
_DELIVERY_NAMESPACE = uuid.UUID("6f1d1c9e-8a55-4f8e-9d0e-4b2a3c1f7e21")

# A webhook the sweeper found still pending is re-sent at most this many times (each logged as a
# delivery row with this outcome), then given up on with the reason in the job's callback_status.
MAX_RESENDS = 5
RESENT = "re-sent by the sweeper: the last attempt recorded no outcome"


def delivery_id(job_id: uuid.UUID) -> uuid.UUID:
    """The id every attempt and re-send of a job's webhook carries: receivers deduplicate on it."""
    return uuid.uuid5(_DELIVERY_NAMESPACE, f"{job_id}/{EVENT}")


def pending_values() -> dict[str, object]:
    """The columns that put a finishing job's webhook in the outbox, for the statement that finishes
    it (``update(Job).values(..., **pending_values())``); a job without a callback keeps its own."""
    has_callback = col(Job.callback_url).is_not(None)
    return {
        "callback_status": case((has_callback, PENDING), else_=col(Job.callback_status)),
        "callback_sent_at": case((has_callback, utcnow()), else_=col(Job.callback_sent_at)),
    }


def announce(enqueue_webhook: EnqueueWebhook | None, job: Job) -> None:
    """Asks the webhooks pool to deliver ``job``'s pending webhook now, if it has a callback.

    Call it after the commit that wrote :func:`pending_values`. Without ``enqueue_webhook``, or when
    the broker refuses, the webhook stays pending and the sweeper sends it later.
    """
    if enqueue_webhook is None or not job.callback_url:
        return
    try:
        enqueue_webhook(job.id)
    except Exception as e:  # the outbox row is committed: the sweeper's re-send covers this
        logger.warning("could not enqueue the webhook of job %s (the sweeper will): %s", job.id, e)


def resend_overdue(session: Session, enqueue_webhook: EnqueueWebhook, *, after_s: float, limit: int) -> int:
    """Claims (moves ``callback_sent_at`` to now) and re-sends pending webhooks sent over ``after_s`` ago;
    returns how many it sent.

    Each re-send is logged as a delivery of its own, and they are capped at :data:`MAX_RESENDS`: a
    delivery that never records an outcome (its task killed every time) is given up on instead of
    being sent forever.
    """
    cutoff = utcnow() - timedelta(seconds=after_s)
    overdue = (col(Job.callback_sent_at) < cutoff) | col(Job.callback_sent_at).is_(None)
    where = [col(Job.callback_status) == PENDING, overdue]
    candidates = session.exec(select(Job.id).where(*where).limit(limit)).all()
    if not candidates:
        return 0
    claimed = session.exec(
        update(Job)
        .where(col(Job.id).in_(candidates), *where)
        .values(callback_sent_at=utcnow())
        .returning(col(Job.id), col(Job.tenant_id), col(Job.callback_url))
    ).all()
    resent = dict(
        session.exec(
            select(WebhookDelivery.job_id, func.count())
            .where(col(WebhookDelivery.job_id).in_([c[0] for c in claimed]), col(WebhookDelivery.outcome) == RESENT)
            .group_by(col(WebhookDelivery.job_id))
        ).all()
    )
    send: list[uuid.UUID] = []
    for job_id, tenant_id, url in claimed:
        n = resent.get(job_id, 0)
        if n >= MAX_RESENDS:
            session.exec(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.callback_status) == PENDING)
                .values(callback_status=f"error: gave up after {n} re-sends that recorded no outcome")
            )
            logger.error("sweeper: job %s: webhook given up after %s re-sends without an outcome", job_id, n)
            continue
        session.add(
            WebhookDelivery(
                delivery_id=delivery_id(job_id),
                job_id=job_id,
                tenant_id=tenant_id,
                url=url or "",
                event=EVENT,
                attempt=n + 1,
                outcome=RESENT,
            )
        )
        send.append(job_id)
    session.commit()
    for job_id in send:
        logger.warning("sweeper: job %s: webhook still pending after %ss; sent again", job_id, after_s)
        enqueue_webhook(job_id)
    return len(send)
