"""Bulk row writes, the only ones in the service: many item rows inserted in one statement, or
updated in one statement per shape of row, each update conditional on the row's state."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import JSON, String, bindparam, cast, func, insert, literal_column
from sqlmodel import Session

from fakescope.db.models import JobItem

T = TypeVar("T")

__all__ = ["IN_BATCH", "batched", "insert_items", "uuids", "write_rows"]

# Values bound in one ``IN (...)``: Postgres takes at most 65,535 parameters a statement, and a job
# can have more items than that (the untrusted-input issue: a 70,000-image job could never start).
IN_BATCH = 10_000


def batched(values: Sequence[T], n: int = IN_BATCH) -> Iterator[Sequence[T]]:
    """``values`` in consecutive slices of at most ``n`` (none for an empty sequence)."""
    for start in range(0, len(values), n):
        yield values[start : start + n]


def uuids(ids: Sequence[str | uuid.UUID]) -> list[uuid.UUID]:
    return [uuid.UUID(str(i)) for i in ids]


def insert_items(session: Session, *, job_id: uuid.UUID, rows: Sequence[Mapping[str, Any]]) -> None:
    """Inserts ``rows`` (column values, ``id`` included) as items of ``job_id`` in one statement, with no
    ORM object per row; the caller commits."""
    if rows:
        table = JobItem.__table__  # type: ignore[attr-defined]
        session.connection().execute(insert(table), [{**row, "job_id": job_id} for row in rows])


def write_rows(session: Session, updates: Sequence[tuple[JobItem, dict[str, Any]]], still: Any) -> int:
    """Writes rows in one statement per shape of row, each only where ``still`` holds (the state the
    write expects); returns how many rows changed.

    A cancel, or another delivery of this task that got here first, wins, and the result is dropped
    rather than written twice. On Postgres a shape's rows travel as one JSON document that the
    statement unpacks into the table's own row type (``json_populate_recordset``: one statement for
    the server to plan and run, where an executemany is one per row); on SQLite (the embedded
    ``fakescope serve``'s default database), or for a value JSON cannot carry (NaN), they go as an
    executemany.
    """
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for it, values in updates:
        shapes.setdefault(tuple(sorted(values)), []).append({"id": it.id, **values})
    postgres = session.connection().dialect.name == "postgresql"
    written = 0
    for keys, rows in shapes.items():
        document = _as_json(rows) if postgres else None
        if document is not None:
            written += _update_from_json(session, keys, document, still)
        else:
            written += _update_many(session, keys, rows, still)
    return written


def _update_from_json(session: Session, keys: tuple[str, ...], document: str, still: Any) -> int:
    table = JobItem.__table__  # type: ignore[attr-defined]
    rows = func.json_populate_recordset(
        literal_column(f"NULL::{table.name}"), cast(bindparam("rows", document, type_=String), JSON)
    ).table_valued("id", *keys)
    stmt = table.update().where(table.c.id == rows.c.id, still).values({k: rows.c[k] for k in keys})
    return session.connection().execute(stmt).rowcount


def _update_many(session: Session, keys: tuple[str, ...], rows: list[dict[str, Any]], still: Any) -> int:
    table = JobItem.__table__  # type: ignore[attr-defined]
    stmt = table.update().where(table.c.id == bindparam("b_id"), still).values({k: bindparam(f"b_{k}") for k in keys})
    return session.connection().execute(stmt, [{f"b_{k}": v for k, v in row.items()} for row in rows]).rowcount


def _as_json(rows: list[dict[str, Any]]) -> str | None:
    """The rows as one JSON array, or None where a value has no JSON form Postgres reads back the same."""
    try:
        return json.dumps(rows, default=_json_value, allow_nan=False)
    except (TypeError, ValueError):
        return None


def _json_value(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError("a naive datetime has no unambiguous JSON form")
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
