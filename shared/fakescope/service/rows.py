"""Row writes the worker pools share: many rows in one statement, each conditional on its state."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam
from sqlmodel import Session

from fakescope.db.models import JobItem

__all__ = ["uuids", "write_rows"]


def uuids(ids: Sequence[str | uuid.UUID]) -> list[uuid.UUID]:
    return [uuid.UUID(str(i)) for i in ids]


def write_rows(session: Session, updates: Sequence[tuple[JobItem, dict[str, Any]]], still: Any) -> int:
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
