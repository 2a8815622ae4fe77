"""Shadow scoring: a candidate scores a share of live traffic beside the promoted version, never answering.

The classify pool hands each finished chunk's items to the train pool (:func:`in_share` picks which),
where :func:`shadow_chunk` reads their originals again, scores them with the shadowing version and
stores each probability beside the live one (``shadow_scores``, one row per version and item, so a
redelivered task writes nothing twice). The live answer and its latency are untouched. This module
imports the detection core (torch): workers only.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from fakescope.db.models import ItemStatus, JobItem, ShadowScore, utcnow
from fakescope.pipeline import classify_items
from fakescope.service.originals import chunk_inputs
from fakescope.service.rows import uuids
from fakescope.storage import ObjectStore

if TYPE_CHECKING:
    from fakescope.detector import Detector, RoutedDetector

__all__ = ["in_share", "shadow_chunk"]

logger = logging.getLogger(__name__)


def in_share(item_id: str | uuid.UUID, share: float) -> bool:
    """Whether an item is among the ``share`` that shadow scoring sees: by a hash of its id, so every
    delivery of a chunk picks the same items."""
    return int(hashlib.sha256(str(item_id).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def shadow_chunk(
    session: Session,
    store: ObjectStore,
    detector: Detector | RoutedDetector,
    *,
    version: str,
    item_ids: Sequence[str | uuid.UUID],
    batch_size: int = 64,
) -> int:
    """Scores the chunk's live-scored items (those classified, not answered from the cache) with the
    shadowing ``version``'s detector; returns how many scores it stored."""
    items = session.exec(
        select(JobItem).where(
            col(JobItem.id).in_(uuids(item_ids)),
            col(JobItem.status) == ItemStatus.DONE,
            col(JobItem.fake_probability).is_not(None),
        )
    ).all()
    done = set(
        session.exec(
            select(ShadowScore.item_id).where(
                ShadowScore.version == version, col(ShadowScore.item_id).in_([it.id for it in items])
            )
        ).all()
    )
    todo = [it for it in items if it.id not in done]
    if not todo:
        return 0
    rows = []
    for it, res in zip(
        todo, classify_items(detector, chunk_inputs(store, todo), batch_size=batch_size, overlays=False), strict=True
    ):
        if res.error is None and res.fake_probability is not None and it.fake_probability is not None:
            rows.append({
                "id": uuid.uuid4(),
                "version": version,
                "item_id": it.id,
                "live_version": it.model_version,
                "live_probability": it.fake_probability,
                "fake_probability": float(res.fake_probability),
                "created_at": utcnow(),
            })  # fmt: skip
    if rows:
        # Both dialects the service runs on (Postgres, and SQLite when embedded) skip a row already there.
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        session.exec(insert(ShadowScore).values(rows).on_conflict_do_nothing())
    session.commit()
    logger.info("shadow %s: scored %s of %s items", version, len(rows), len(item_ids))
    return len(rows)
