"""The outbox: the statement that finishes a job puts its webhook in the outbox, and the webhook goes to
the sender its caller passed in (no process-wide sender), once, or waits for the sweeper."""

from __future__ import annotations

import uuid

from sqlmodel import Session

from fakescope.db.models import ItemStatus, Job, JobItem, JobState
from fakescope.service import jobs, uploads
from fakescope.service.outbox import PENDING
from fakescope.service.tenants import create_api_key
from tests.utils.stack import ServiceEnv

CALLBACK = "http://127.0.0.1:9/done"


def _tenant(session: Session) -> uuid.UUID:
    tenant, _ = create_api_key(session, tenant_name=f"outbox-{uuid.uuid4().hex[:6]}")
    return tenant.id


def _job(session: Session, tenant_id: uuid.UUID, *, done: bool, callback_url: str | None = CALLBACK) -> Job:
    job = Job(tenant_id=tenant_id, callback_url=callback_url, total=1)
    status = ItemStatus.DONE if done else ItemStatus.QUEUED
    session.add(job)
    session.add(JobItem(job_id=job.id, position=0, name="a.png", object_key="x", status=status, prediction="real"))
    session.commit()
    return job


def test_the_job_that_finishes_hands_its_webhook_to_the_given_sender_once(service_env: ServiceEnv) -> None:
    with service_env.session() as session:
        job = _job(session, _tenant(session), done=True)
        sent: list[uuid.UUID] = []
        finished = jobs.finish(session, job_id=job.id, enqueue_webhook=sent.append)
        assert finished is not None and finished.callback_status == PENDING and sent == [job.id]
        # Finished already: a second caller (a twin chunk, the sweeper) sends nothing.
        assert jobs.finish(session, job_id=job.id, enqueue_webhook=sent.append) is None
        assert sent == [job.id]
        # No callback, nothing in the outbox and nothing sent.
        plain = _job(session, job.tenant_id, done=True, callback_url=None)
        finished = jobs.finish(session, job_id=plain.id, enqueue_webhook=sent.append)
        assert finished is not None and finished.callback_status is None and sent == [job.id]


def test_without_a_sender_or_when_it_fails_the_webhook_waits_for_the_sweeper(service_env: ServiceEnv) -> None:
    def broker_down(_job_id: uuid.UUID) -> None:
        raise ConnectionError("the broker is down")

    with service_env.session() as session:
        tenant_id = _tenant(session)
        cancelled = jobs.cancel_job(session, job=_job(session, tenant_id, done=False), enqueue_webhook=broker_down)
        assert (cancelled.state, cancelled.callback_status) == (JobState.CANCELLED, PENDING)
        finished = jobs.finish(session, job_id=_job(session, tenant_id, done=True).id)
        assert finished is not None and finished.callback_status == PENDING


def test_an_upload_with_no_images_fails_with_its_webhook_in_the_outbox(service_env: ServiceEnv) -> None:
    with service_env.session() as session:
        sent: list[uuid.UUID] = []
        job, created = uploads.create_job(
            session,
            service_env.store,
            lambda *_: 0,
            uploads.JobRequest(tenant_id=_tenant(session), callback_url=CALLBACK),
            inputs=[],
            enqueue_webhook=sent.append,
        )
        assert created and (job.state, job.error) == (JobState.FAILED, "no images in the upload")
        assert job.callback_status == PENDING and job.callback_sent_at is not None and sent == [job.id]
