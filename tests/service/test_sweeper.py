"""The sweeper finds work whose message was lost and sends it again; the real workers then finish it."""

from __future__ import annotations

import functools
import io
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import update
from sqlmodel import col, select

from fakescope.db.models import ExplainStatus, ItemStatus, Job, JobItem, JobState, utcnow
from fakescope.detector import Detector
from fakescope.imageio import InputItem
from fakescope.service import uploads
from fakescope.service.idempotency import JobRequest
from fakescope.service.processing import classify_chunk
from fakescope.service.sweeper import sweep
from fakescope.service.tenants import create_api_key
from fakescope.tasks import Enqueuer, make_celery
from tests.utils.chunks import Chunks
from tests.utils.stack import ServiceEnv, ServiceStack, png_bytes


def _lost(_job_id: uuid.UUID, _ids: Sequence[uuid.UUID]) -> int:
    """The message that never reached the broker (the API died, Redis lost it)."""
    return 0


def _age(st: ServiceStack, job_id: uuid.UUID, seconds: float) -> None:
    with st.svc.session() as session:
        session.exec(
            update(JobItem)
            .where(col(JobItem.job_id) == job_id)
            .values(enqueued_at=utcnow() - timedelta(seconds=seconds))
        )
        session.commit()


def test_lost_classify_and_explain_messages_are_sent_again(service_stack: ServiceStack, tiny_checkpoint: Path) -> None:
    st = service_stack
    app = make_celery(st.svc.settings)
    enqueuer = Enqueuer(app, st.svc.settings)
    detector = Detector.load(tiny_checkpoint, device="cpu")
    pool = list(range(7100, 7500))
    probs = detector.predict(np.stack([np.asarray(Image.open(io.BytesIO(png_bytes(s))).convert("RGB")) for s in pool]))
    fakes = [s for s, p in zip(pool, probs, strict=True) if p >= 0.5][:10]
    assert fakes, "the tiny detector called none of 400 images fake"
    seeds = [s for s in pool if s not in fakes][:30] + fakes
    with st.svc.session() as session:
        tenant, _ = create_api_key(session, tenant_name=f"sweep-{uuid.uuid4().hex[:6]}")
        inputs = [InputItem(f"{s}.png", functools.partial(png_bytes, s)) for s in seeds]
        lost_job, _ = uploads.create_job(
            session, st.svc.store, _lost, JobRequest(tenant_id=tenant.id), inputs=inputs[:20]
        )
        # A second job classified here, whose explain messages are lost on the way.
        explain_job, _ = uploads.create_job(
            session, st.svc.store, _lost, JobRequest(tenant_id=tenant.id, explain=True), inputs=inputs[20:]
        )
        ids = session.exec(select(JobItem.id).where(JobItem.job_id == explain_job.id)).all()
        classify_chunk(session, st.svc.store, detector, job_id=explain_job.id, item_ids=ids, enqueue_explain=_lost)
        pending = session.exec(
            select(JobItem.id).where(JobItem.job_id == explain_job.id, JobItem.explain_status == ExplainStatus.PENDING)
        ).all()
        assert len(pending) == len(fakes)
        lost_id, explain_id = lost_job.id, explain_job.id

    sweep_now = functools.partial(
        sweep, enqueue_classify=enqueuer.classify, enqueue_explain=enqueuer.explain, deadline_s=600
    )
    mine = [lost_id, explain_id]

    def stamps() -> dict[uuid.UUID, object]:
        with st.svc.session() as session:
            rows = session.exec(select(JobItem.id, JobItem.enqueued_at).where(col(JobItem.job_id).in_(mine))).all()
        return dict(rows)

    before = stamps()
    with st.svc.session() as session:
        sweep_now(session)
    # Within the deadline nothing of ours is touched: the messages might still be on their way.
    assert stamps() == before
    _age(st, lost_id, 700)
    _age(st, explain_id, 700)
    with st.svc.session() as session:
        report = sweep_now(session)
        # Other tests' jobs share the database, so at least ours.
        assert report.classify >= 20 and report.explain >= len(pending)
        # Claimed: a second sweeper right after finds nothing to send twice.
        again = sweep_now(session)
        assert (again.classify, again.explain) == (0, 0)
    app.close()

    for job_id in (lost_id, explain_id):
        job = _wait(st, job_id)
        assert job.state == JobState.SUCCEEDED, job
    with st.svc.session() as session:
        items = session.exec(select(JobItem).where(col(JobItem.job_id).in_([lost_id, explain_id]))).all()
    assert all(i.status == ItemStatus.DONE for i in items)
    assert all(i.explain_status in (ExplainStatus.DONE, ExplainStatus.NONE) for i in items)
    assert sum(i.explain_status == ExplainStatus.DONE for i in items) == len(pending)


def _wait(st: ServiceStack, job_id: uuid.UUID) -> Job:
    from tests.utils.stack import wait_until

    def done() -> Job | None:
        with st.svc.session() as session:
            job = session.get(Job, job_id)
            return job if job is not None and JobState(job.state).finished else None

    try:
        return wait_until(done, 240, f"job {job_id}", interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{st.logs()}") from None


def test_a_job_whose_upload_request_died_is_closed_with_the_images_it_has(service_stack: ServiceStack) -> None:
    st = service_stack
    with st.svc.session() as session:
        tenant, _ = create_api_key(session, tenant_name="abandoned-upload")
        # What an API killed mid-upload leaves: the stored windows' items (classified since), total still 0.
        job = Job(tenant_id=tenant.id, state=JobState.RUNNING, created_at=utcnow() - timedelta(hours=2))
        session.add(job)
        session.commit()
        session.add_all(
            [
                JobItem(
                    job_id=job.id,
                    position=i,
                    name=f"{i}.png",
                    object_key=f"k{i}",
                    status=ItemStatus.DONE,
                    prediction="real",
                )
                for i in range(3)
            ]
        )
        session.commit()
        job_id = job.id
    sweep_now = functools.partial(sweep, enqueue_classify=_lost, enqueue_explain=_lost, deadline_s=600)
    with st.svc.session() as session:
        report = sweep_now(session, upload_timeout_s=3 * 3600)
        running = session.get(Job, job_id)
        assert running is not None and running.state == JobState.RUNNING
        report = sweep_now(session, upload_timeout_s=3600)
        closed = session.get(Job, job_id)
        assert closed is not None
        session.refresh(closed)
    assert report.abandoned_uploads >= 1
    assert (closed.state, closed.total) == (JobState.PARTIALLY_SUCCEEDED, 3)
    assert closed.error == "the upload request ended before all of its images were stored"


def test_the_deadline_runs_from_the_last_start(service_env: ServiceEnv) -> None:
    # A long backlog: both chunks were sent long ago, but a worker started one a moment ago. Only the
    # other is overdue; re-sending the started one would duplicate work in hand.
    with service_env.session() as session:
        tenant, _ = create_api_key(session, tenant_name=f"sweep-{uuid.uuid4().hex[:6]}")
        inputs = [InputItem(f"{s}.png", functools.partial(png_bytes, s)) for s in (1, 2, 3, 4)]
        job, _ = uploads.create_job(session, service_env.store, _lost, JobRequest(tenant_id=tenant.id), inputs=inputs)
        ids = session.exec(select(JobItem.id).where(JobItem.job_id == job.id).order_by(col(JobItem.position))).all()
        session.exec(
            update(JobItem).where(col(JobItem.job_id) == job.id).values(enqueued_at=utcnow() - timedelta(seconds=1000))
        )
        session.exec(update(JobItem).where(col(JobItem.id).in_(ids[:2])).values(started_at=utcnow()))
        session.commit()
        sent = Chunks()
        sweep(session, enqueue_classify=sent, enqueue_explain=_lost, deadline_s=100)
    assert sorted(sent.item_ids) == sorted(ids[2:])


def test_a_presigned_job_never_started_is_started_once_its_urls_expired(service_env: ServiceEnv) -> None:
    with service_env.session() as session:
        tenant, _ = create_api_key(session, tenant_name=f"sweep-{uuid.uuid4().hex[:6]}")
        job, urls, _ = uploads.create_upload_job(
            session, service_env.store, JobRequest(tenant.id), names=["a.png", "b.png"]
        )
        fresh, _, _ = uploads.create_upload_job(session, service_env.store, JobRequest(tenant.id), names=["c.png"])
        first_id, first_key = urls[0][0].id, urls[0][0].object_key
        service_env.store.put(first_key, png_bytes(5))  # one of two arrived, then the client vanished
        session.exec(update(Job).where(col(Job.id) == job.id).values(created_at=utcnow() - timedelta(hours=3)))
        session.commit()
        sent = Chunks()
        rep = sweep(
            session,
            enqueue_classify=sent,
            enqueue_explain=_lost,
            deadline_s=3600,
            store=service_env.store,
            awaiting_timeout_s=7200,
        )
        session.refresh(job)
        session.refresh(fresh)
        errors = session.exec(
            select(JobItem.error).where(JobItem.job_id == job.id).order_by(col(JobItem.position))
        ).all()
    assert rep.started_uploads == 1 and job.state == JobState.QUEUED and fresh.state == JobState.AWAITING_UPLOAD
    assert sent.item_ids == [first_id] and errors == [None, "image was not uploaded"]
