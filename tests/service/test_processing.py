"""Service functions the workers run, called directly against real Postgres and the S3 server."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlmodel import select
from stackfixtures import ServiceEnv, png_bytes

from fakescope.db.models import ItemStatus, Job, JobItem, JobState
from fakescope.detector import Detector
from fakescope.imageio import InputItem
from fakescope.service import jobs as svc
from fakescope.service.processing import classify_chunk
from fakescope.service.tenants import authenticate, create_api_key, hash_key


class Chunks:
    """Collects what create_job would send to the broker, so the test can run the chunks itself."""

    def __init__(self) -> None:
        self.sent: list[tuple[uuid.UUID, list[uuid.UUID]]] = []

    def __call__(self, job_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> int:
        self.sent.append((job_id, list(item_ids)))
        return 1


@pytest.fixture(scope="module")
def detector(tiny_checkpoint: Path) -> Detector:
    return Detector.load(tiny_checkpoint, device="cpu")


def _job(env: ServiceEnv, n: int) -> Chunks:
    chunks = Chunks()
    with env.session() as session:
        tenant, _ = create_api_key(session, tenant_name=f"svc-{uuid.uuid4().hex[:6]}")
        items = [InputItem(f"{i}.png", lambda i=i: png_bytes(300 + i)) for i in range(n)]
        _, created = svc.create_job(session, env.store, chunks, tenant_id=tenant.id, inputs=items)
        assert created
    return chunks


def test_api_keys_are_hashed_at_rest(service_env: ServiceEnv) -> None:
    with service_env.session() as session:
        tenant, key = create_api_key(session, tenant_name="hash-check")
        assert authenticate(session, key=key) == tenant.id
        assert authenticate(session, key=key + "x") is None
        from fakescope.db.models import ApiKey

        stored = session.exec(select(ApiKey.key_hash).where(ApiKey.tenant_id == tenant.id)).all()
    assert stored == [hash_key(key)]
    assert key not in stored


def test_a_chunk_run_twice_writes_each_result_once(service_env: ServiceEnv, detector: Detector) -> None:
    chunks = _job(service_env, 6)
    ((job_id, ids),) = chunks.sent
    with service_env.session() as session:
        assert classify_chunk(session, service_env.store, detector, job_id=job_id, item_ids=ids) == 6
        # The redelivered copy of the same message finds nothing left to do.
        assert classify_chunk(session, service_env.store, detector, job_id=job_id, item_ids=ids) == 0
        items = session.exec(select(JobItem).where(JobItem.job_id == job_id)).all()
        state = session.get(Job, job_id).state  # type: ignore[union-attr]
    assert state == JobState.SUCCEEDED
    assert sorted(i.attempts for i in items) == [1] * 6
    assert all(i.status == ItemStatus.DONE and i.overlay_key for i in items)


def test_cancelled_items_are_not_processed(service_env: ServiceEnv, detector: Detector) -> None:
    chunks = _job(service_env, 4)
    ((job_id, ids),) = chunks.sent
    with service_env.session() as session:
        svc.cancel_job(session, job=session.get(Job, job_id))  # type: ignore[arg-type]
        assert classify_chunk(session, service_env.store, detector, job_id=job_id, item_ids=ids) == 0
        items = session.exec(select(JobItem).where(JobItem.job_id == job_id)).all()
        state = session.get(Job, job_id).state  # type: ignore[union-attr]
    assert state == JobState.CANCELLED
    assert {i.status for i in items} == {ItemStatus.CANCELLED}
    assert all(i.prediction is None for i in items)
    assert service_env.store.list(f"jobs/{job_id}/overlays/") == []
