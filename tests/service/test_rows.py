"""Bulk row writes: the one-statement Postgres form writes what an executemany writes."""

from __future__ import annotations

import math
import uuid
from typing import Any

from sqlalchemy import event, inspect
from sqlmodel import Session, col, select

from fakescope.db.models import ExplainStatus, ItemStatus, Job, JobItem, utcnow
from fakescope.service import rows
from fakescope.service.tenants import create_api_key
from tests.utils.stack import ServiceEnv

# Every column but those each item has of its own.
COLUMNS = [
    c.name
    for c in inspect(JobItem).local_table.columns
    if c.name not in ("id", "position", "name", "object_key", "enqueued_at")
]


def _items(session: Session, n: int) -> list[JobItem]:
    tenant, _ = create_api_key(session, tenant_name=f"rows-{uuid.uuid4().hex[:6]}")
    job = Job(tenant_id=tenant.id, total=n)
    session.add(job)
    session.flush()
    items = [JobItem(job_id=job.id, position=p, name=f"{p}.png", object_key=f"k/{p}") for p in range(n)]
    session.add_all(items)
    session.commit()
    return items


def _result(k: int) -> dict[str, Any]:
    now = utcnow()
    return {
        "status": ItemStatus.DONE,
        "prediction": "fake" if k % 2 else "real",
        "fake_probability": 0.25 + k / 100,
        "domain_score": None,
        "sha256": f"{k:064x}",
        "width": 32,
        "height": 32,
        "cam_grid": {"grid": [[0.5, 1.0], [0.0, 0.25]], "shape": [2, 2]},
        "provenance": None if k % 2 else {"c2pa": {"claim_generator": "x"}},
        "decided_by": "detector",
        "explain_status": ExplainStatus.NONE,
        "started_at": now,
        "finished_at": now,
        "duration_ms": 1.5,
        "model_version": "m@1",
    }


def _statements(session: Session) -> list[str]:
    seen: list[str] = []
    event.listen(session.get_bind(), "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_one_statement_writes_what_executemany_writes(service_env: ServiceEnv) -> None:
    with service_env.session() as session:
        items = _items(session, 8)
        fast, slow = items[:4], items[4:]
        still = col(JobItem.status) == ItemStatus.QUEUED
        results = [_result(k) for k in range(4)]
        updates = list(zip(fast, results, strict=True))
        seen = _statements(session)
        assert rows.write_rows(session, updates, still) == 4
        assert len(seen) == 1 and "json_populate_recordset" in seen[0]
        keys = tuple(sorted(results[0]))
        assert (
            rows._update_many(session, keys, [{"id": it.id, **r} for it, r in zip(slow, results, strict=True)], still)
            == 4
        )
        session.commit()
    # Read back in a new session: the one above still holds the items as they were before the statements.
    with service_env.session() as session:
        got = {it.position: it for it in session.exec(select(JobItem).where(col(JobItem.job_id) == items[0].job_id))}
        for k, written in enumerate(results):
            a, b = got[k], got[k + 4]
            assert {c: getattr(a, c) for c in COLUMNS} == {c: getattr(b, c) for c in COLUMNS}
            assert {c: getattr(a, c) for c in written} == written
        # Written again (a redelivered chunk): the rows are no longer queued, so nothing changes.
        assert rows.write_rows(session, [(it, _result(9)) for it in fast], still) == 0


def test_a_value_json_cannot_carry_goes_as_executemany(service_env: ServiceEnv) -> None:
    with service_env.session() as session:
        (item,) = _items(session, 1)
        session.refresh(item)
        seen = _statements(session)
        values = {**_result(1), "domain_score": math.nan}
        assert rows.write_rows(session, [(item, values)], col(JobItem.status) == ItemStatus.QUEUED) == 1
        assert not any("json_populate_recordset" in s for s in seen)
        session.commit()
        session.refresh(item)
        assert item.domain_score is not None and math.isnan(item.domain_score)
