"""The process-wide bound on upload bytes the API holds: concurrent uploads share it, and a request
that cannot get its share in time fails whole (503 at the API) without leaving a job behind."""

from __future__ import annotations

import functools
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlmodel import select

from fakescope.db.models import Job, JobItem, JobState
from fakescope.imageio import InputItem
from fakescope.service import uploads
from fakescope.service.budget import ByteBudget, UploadBusy
from fakescope.service.tenants import create_api_key
from tests.utils.stack import ServiceEnv, png_bytes


class RecordingBudget(ByteBudget):
    """Remembers the most it ever had out at once."""

    def __init__(self, limit: int, wait_s: float = 30.0) -> None:
        super().__init__(limit, wait_s)
        self.peak = 0

    def _take(self, n: int) -> bool:
        took = super()._take(n)
        self.peak = max(self.peak, self.used)
        return took


def _tenant(env: ServiceEnv) -> uuid.UUID:
    with env.session() as session:
        return create_api_key(session, tenant_name=f"budget-{uuid.uuid4().hex[:6]}")[0].id


def _inputs(seeds: range) -> list[InputItem]:
    return [InputItem(f"{s}.png", functools.partial(png_bytes, s), size=len(png_bytes(s))) for s in seeds]


def test_a_budget_waits_gives_way_and_lets_one_oversized_reservation_through_alone() -> None:
    budget = ByteBudget(100, wait_s=0.05)
    assert budget.try_acquire(60) and not budget.try_acquire(60)
    with pytest.raises(UploadBusy, match="hold 60 of 100 bytes"):
        budget.acquire(60)
    threading.Timer(0.02, budget.release, args=(60,)).start()
    budget.acquire(0)  # nothing to reserve: never waits
    budget.wait_s = 5.0
    budget.acquire(60)  # waits for the release above
    assert budget.used == 60
    budget.release(60)
    assert budget.try_acquire(500) and budget.used == 500  # larger than the budget, but alone
    assert not budget.try_acquire(1)
    budget.release(500)
    assert budget.used == 0


def test_concurrent_uploads_never_hold_more_than_the_budget(service_env: ServiceEnv) -> None:
    tenant_id = _tenant(service_env)
    one = max(len(png_bytes(s)) for s in range(7000, 7090))
    budget = RecordingBudget(3 * uploads.UPLOAD_THREADS * one)  # three groups of reads, for three uploads of 30

    def upload(start: int) -> uuid.UUID:
        with service_env.session() as session:
            job, created = uploads.create_job(
                session,
                service_env.store,
                lambda job_id, ids: 1,
                uploads.JobRequest(tenant_id=tenant_id),
                inputs=_inputs(range(start, start + 30)),
                budget=budget,
            )
            assert created
            return job.id

    with ThreadPoolExecutor(3) as pool:
        job_ids = list(pool.map(upload, (7000, 7030, 7060)))
    assert 0 < budget.peak <= budget.limit
    assert budget.used == 0  # every request gave back all it held
    with service_env.session() as session:
        for job_id in job_ids:
            items = session.exec(select(JobItem).where(JobItem.job_id == job_id)).all()
            assert len(items) == 30
            assert all(service_env.store.size(it.object_key) for it in items)


def test_an_upload_that_cannot_get_memory_in_time_fails_whole(service_env: ServiceEnv) -> None:
    tenant_id = _tenant(service_env)
    budget = ByteBudget(10_000, wait_s=0.1)
    budget.acquire(10_000)  # another request holds it all
    with service_env.session() as session:
        # The same request twice: once while another holds the memory, then as the client's retry.
        upload = functools.partial(
            uploads.create_job,
            session,
            service_env.store,
            lambda job_id, ids: 1,
            uploads.JobRequest(tenant_id=tenant_id, idempotency_key="busy-1"),
            inputs=_inputs(range(7100, 7110)),
            budget=budget,
        )
        with pytest.raises(UploadBusy):
            upload()
        assert session.exec(select(Job).where(Job.tenant_id == tenant_id)).all() == []
        assert budget.used == 10_000  # it gave back nothing it did not take
        budget.release(10_000)
        # The client's retry, with the same key, goes through once memory is free.
        job, created = upload()
        assert created and job.total == 10 and job.state == JobState.QUEUED
    assert budget.used == 0
