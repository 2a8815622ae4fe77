"""Classify pool: a worker SIGKILLed mid-job loses nothing and duplicates nothing."""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import func
from sqlmodel import col, select

from fakescope.db.models import ItemStatus, JobItem
from tests.utils.stack import ServiceStack, png_bytes, wait_until

pytestmark = pytest.mark.slow

N = 150


def _freeze_mid_chunk(st: ServiceStack, name: str, job_id: str) -> None:
    """Stops worker ``name`` (SIGSTOP) while it holds a started, unfinished chunk of ``job_id``.

    Killed without this, the worker can be between two chunks (one acknowledged, the next not yet
    fetched) and leave nothing in hand: the test would then test nothing, or fail for no fault.
    """
    pid = st.stack.procs[name].pid
    for _ in range(500):
        os.killpg(pid, signal.SIGSTOP)
        # While it is stopped the database is final: an item started and not finished is in its hands.
        with st.svc.session() as session:
            in_hand = session.exec(
                select(func.count())
                .select_from(JobItem)
                .where(
                    col(JobItem.job_id) == job_id,
                    col(JobItem.status) == ItemStatus.QUEUED,
                    col(JobItem.started_at).is_not(None),
                )
            ).one()
        if in_hand:
            return
        os.killpg(pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError(f"never caught {name} mid-chunk:\n{st.logs()}")


def test_sigkill_mid_job_then_fresh_worker_gives_one_result_each(service_stack: ServiceStack) -> None:
    st = service_stack
    files = [("files", (f"{i}.png", png_bytes(5000 + i), "image/png")) for i in range(1, N + 1)]
    with st.client() as c:
        r = c.post("/v1/jobs", files=files)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        def done() -> int:
            return c.get(f"/v1/jobs/{job_id}").json()["counts"]["done"]

        wait_until(lambda: done() >= 10, 180, "the first chunk", interval=0.1)
        old = st.classify_worker
        _freeze_mid_chunk(st, old, job_id)
        # SIGKILL the worker's whole process group (main process and pool child): no warm shutdown,
        # no ack, no chance to requeue; its reserved message sits unacknowledged in Redis.
        st.stack.stop(old, sig=signal.SIGKILL)
        after_kill = done()
        assert after_kill < N, "the job finished before the kill; nothing was tested"
        # What the kill left: the chunk in hand, delivered and never acknowledged.
        assert job_id in st.unacked_jobs(), "the killed worker's chunk is not waiting for redelivery"

        st.classify_worker = f"classify-{int(old.rsplit('-', 1)[1]) + 1}"
        st.start_worker("classify", st.classify_worker)
        job = st.wait_job(job_id, timeout=400)
        assert job["state"] == "succeeded", job
        assert job["counts"]["done"] == N
        results = c.get(f"/v1/jobs/{job_id}/results", params={"limit": 1000}).json()

    assert results["count"] == N
    assert sorted(r["position"] for r in results["data"]) == list(range(N))
    assert all(r["prediction"] in ("real", "fake") for r in results["data"])
    with st.svc.session() as session:
        per_position = session.exec(  # type: ignore[call-overload]
            select(JobItem.position, func.count()).where(JobItem.job_id == job_id).group_by(JobItem.position)
        ).all()
        attempts = session.exec(select(JobItem.attempts).where(col(JobItem.job_id) == job_id)).all()
    assert sorted(per_position) == [(p, 1) for p in range(N)]
    # Every start counts toward the poison limit (it is counted before any work): the chunk the kill
    # interrupted was started twice, every other item once. One chunk (10 images) at most was running.
    assert set(attempts) <= {1, 2} and sum(a == 2 for a in attempts) <= 10, attempts
    with st.svc.session() as session:
        grids = session.exec(select(JobItem.cam_grid).where(col(JobItem.job_id) == job_id)).all()
    assert len(grids) == N and all(g and g["grid"] for g in grids)  # every overlay can be drawn
