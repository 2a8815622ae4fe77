"""Feedback: a platform's labels for classified images, given item by item and read back as a list.

One row an item: giving the same label again changes nothing (idempotent), another label replaces the
old one. Each row keeps the verdict it corrects, so disputes can be counted by verdict and a labelled
export (``fakescope feedback export``) can be fed to ``fakescope calibrate`` and ``fakescope train``.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

from sqlalchemy import func
from sqlmodel import Session, col, select

from fakescope.db.models import Feedback, FeedbackCreate, ItemStatus, Job, JobItem, utcnow

__all__ = ["FeedbackError", "Given", "give_feedback", "list_feedback"]


class FeedbackError(ValueError):
    """The item cannot take feedback: it was never classified (``detail`` says why)."""


class Given(NamedTuple):
    feedback: Feedback
    item: JobItem
    # True: a new row; False: the item's row already said this, or was changed to say it.
    created: bool
    changed: bool


def give_feedback(
    session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, position: int, body: FeedbackCreate
) -> Given | None:
    """Stores the tenant's label for one item; None when the tenant has no such job or item.

    Raises:
        FeedbackError: the item has no verdict (it failed, was cancelled or is not classified yet).
    """
    item = session.exec(
        select(JobItem)
        .join(Job, col(Job.id) == col(JobItem.job_id))
        .where(col(Job.tenant_id) == tenant_id, col(JobItem.job_id) == job_id, col(JobItem.position) == position)
    ).first()
    if item is None:
        return None
    if item.status != ItemStatus.DONE or item.prediction is None:
        raise FeedbackError("Item has no verdict to give feedback on")
    row = session.exec(select(Feedback).where(col(Feedback.item_id) == item.id)).first()
    if row is not None:
        if (row.label, row.note) == (body.label, body.note):
            return Given(row, item, created=False, changed=False)
        row.label, row.note, row.updated_at = body.label, body.note, utcnow()
        session.add(row)
        session.commit()
        session.refresh(row)
        return Given(row, item, created=False, changed=True)
    row = Feedback(
        label=body.label,
        note=body.note,
        tenant_id=tenant_id,
        job_id=job_id,
        item_id=item.id,
        position=position,
        verdict=item.prediction,
        fake_probability=item.fake_probability,
        model_version=item.model_version,
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return Given(row, item, created=True, changed=True)


def list_feedback(
    session: Session, *, tenant_id: uuid.UUID, offset: int = 0, limit: int = 100
) -> tuple[list[tuple[Feedback, JobItem]], int]:
    """The tenant's feedback, oldest first, with each row's item; and how many there are."""
    count = session.exec(select(func.count()).select_from(Feedback).where(col(Feedback.tenant_id) == tenant_id)).one()
    rows = session.exec(
        select(Feedback, JobItem)
        .join(JobItem, col(JobItem.id) == col(Feedback.item_id))
        .where(col(Feedback.tenant_id) == tenant_id)
        .order_by(col(Feedback.created_at), col(Feedback.id))
        .offset(offset)
        .limit(limit)
    ).all()
    return [(f, it) for f, it in rows], int(count)
