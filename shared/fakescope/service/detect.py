"""The synchronous check (``POST /v1/detect``): a one-image job the API waits for, within a deadline.

The image goes through the job path unchanged (stored, deduplicated, answered from the result cache,
classified by the classify pool, never by the API) but is sent ahead of queued job chunks
(:data:`fakescope.tasks.DETECT_PRIORITY`). The API polls the item's row; past the deadline it cancels
the job, so a check nobody waits for any more is skipped by the workers, and answers 503.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from sqlmodel import select

from fakescope.db.engine import new_session
from fakescope.db.models import ItemStatus, JobItem
from fakescope.polling import poll

__all__ = ["wait_for_item"]

# The first polls come quickly (a cached answer is ready in milliseconds), then every 100 ms.
_POLL_S = (0.01, 0.02, 0.05, 0.1)


def wait_for_item(
    url: str,
    *,
    job_id: uuid.UUID,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobItem | None:
    """The job's first item once it is no longer queued (done, failed or cancelled); None when the
    deadline passes first. Each poll reads in a fresh session on the database at ``url``, so it sees
    the worker's commit."""

    def answered() -> JobItem | None:
        with new_session(url) as session:
            item = session.exec(select(JobItem).where(JobItem.job_id == job_id, JobItem.position == 0)).first()
        if item is not None and item.status not in (ItemStatus.QUEUED, ItemStatus.AWAITING_UPLOAD):
            return item
        return None

    return poll(answered, waits=_POLL_S, timeout_s=timeout_s, clock=clock, sleep=sleep)
