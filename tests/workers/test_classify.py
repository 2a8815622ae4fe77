"""Classify pool: a worker SIGKILLed mid-job loses nothing and duplicates nothing."""

from __future__ import annotations

import signal
import uuid

import pytest
from sqlalchemy import func
from sqlmodel import col, select

from fakescope.db.models import ItemStatus, JobItem
from tests.utils.stack import HoldPoint, ServiceEnv, png_bytes, private_stack

pytestmark = pytest.mark.slow

N = 40  # four chunks of ten: one answered, one killed in hand, two waiting


def test_sigkill_mid_job_then_fresh_worker_gives_one_result_each(service_env: ServiceEnv) -> None:
    hold = HoldPoint(service_env.tmp / f"hold-{uuid.uuid4().hex[:8]}")
    # The killed worker's message comes back after the visibility timeout, which must exceed the time limit.
    tight = {"FAKESCOPE_TASK_TIME_LIMIT_S": "20", "FAKESCOPE_VISIBILITY_TIMEOUT_S": "25"}
    with private_stack(service_env, "classify-kill", settings=tight) as st:
        st.start_worker("classify", "classify-1", settings=hold.env)
        files = [("files", (f"{i}.png", png_bytes(5000 + i), "image/png")) for i in range(1, N + 1)]
        with st.client() as c:
            r = c.post("/v1/jobs", files=files)
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]

        # The first chunk is let through and answered; the worker then stops in the second, whose start
        # is committed and whose work has not begun: the kill lands mid-chunk every time.
        _, held = hold.hold_after(1, job_id)
        assert held["job_id"] == job_id
        with st.client() as c:
            assert c.get(f"/v1/jobs/{job_id}").json()["counts"]["done"] == 10
        with st.svc.session() as session:
            in_hand = session.exec(select(JobItem).where(col(JobItem.id).in_([uuid.UUID(i) for i in held["item_ids"]])))
            assert [(i.status, i.started_at is not None, i.attempts) for i in in_hand] == [
                (ItemStatus.QUEUED, True, 1)
            ] * 10

        # SIGKILL the worker's whole process group (main process and pool child): no warm shutdown,
        # no ack, no chance to requeue; its reserved message sits unacknowledged in Redis.
        st.stop("classify-1", sig=signal.SIGKILL)
        assert job_id in st.unacked_jobs(), "the killed worker's chunk is not waiting for redelivery"

        st.start_worker("classify", "classify-2")
        job = st.wait_job(job_id, timeout=180)
        assert job["state"] == "succeeded", job
        assert job["counts"]["done"] == N
        with st.client() as c:
            results = c.get(f"/v1/jobs/{job_id}/results", params={"limit": 1000}).json()

    assert results["count"] == N
    assert sorted(r["position"] for r in results["data"]) == list(range(N))
    assert all(r["prediction"] in ("real", "fake") for r in results["data"])
    with service_env.session() as session:
        per_position = session.exec(
            select(JobItem.position, func.count()).where(JobItem.job_id == job_id).group_by(col(JobItem.position))
        ).all()
        attempts = dict(session.exec(select(JobItem.id, JobItem.attempts).where(col(JobItem.job_id) == job_id)).all())
        grids = session.exec(select(JobItem.cam_grid).where(col(JobItem.job_id) == job_id)).all()
    assert sorted(per_position) == [(p, 1) for p in range(N)]
    # Every start counts toward the poison limit (it is counted before any work): the chunk the kill
    # interrupted was started twice, every other item once.
    assert set(attempts.values()) == {1, 2}
    assert {str(i) for i, a in attempts.items() if a == 2} == set(held["item_ids"])
    assert len(grids) == N and all(g and g["grid"] for g in grids)  # every overlay can be drawn
