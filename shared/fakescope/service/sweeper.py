"""The sweeper: work that waited past its deadline is sent to the broker again; finished jobs are closed.

A message can be lost without any worker noticing: Redis restarted without its data, the API died
between committing a job and enqueueing it, a worker died between writing a chunk and enqueueing
its explanations. Redis's own redelivery covers only messages it still holds. The sweeper looks at
the database, which is the record of what is owed:

- items still ``queued`` whose classify message was sent more than ``deadline`` ago are enqueued again;
- classified items still waiting for an explanation past the deadline likewise, on the explain queue;
- jobs whose items are all finished but that were never closed (a worker died right after its last
  write) are finished, which also sends their callback;
- presigned jobs never started by their client are started once their upload URLs have expired
  (``presign_expiry_s + upload_timeout_s``), with the images that arrived;
- with ``FAKESCOPE_RETENTION_DAYS``, finished jobs past it are deleted: rows and the objects only they use;
- webhooks still pending in the outbox ``redeliver_after_s`` after they were last handed to the
  webhooks queue (a lost message, a broker outage, a webhooks pool that was down) are sent again.

Re-sending is safe: tasks only touch items still waiting, so a duplicate finds nothing to do. Each
item is claimed by moving its ``enqueued_at`` forward in a conditional update, so two sweepers never
send the same item twice in one round. The deadline must exceed the task time limit, or a chunk that
is merely slow gets a twin (harmless, but wasted work).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from fakescope.db.models import ExplainStatus, ItemStatus, Job, JobItem, JobState, utcnow
from fakescope.service import Enqueue, EnqueueWebhook, outbox
from fakescope.service.jobs import JobStateError, finish, purge_expired
from fakescope.service.outbox import MAX_RESENDS, RESENT
from fakescope.service.uploads import start_job
from fakescope.storage import ObjectStore

# MAX_RESENDS and RESENT are the outbox's: re-exported, as the sweeper applies them.
__all__ = ["MAX_RESENDS", "RESENT", "SweepReport", "main", "run", "sweep"]

logger = logging.getLogger(__name__)

ACTIVE = (JobState.QUEUED, JobState.RUNNING)


@dataclass
class SweepReport:
    classify: int = 0
    explain: int = 0
    finished_jobs: int = 0
    abandoned_uploads: int = 0
    webhooks: int = 0
    purged_jobs: int = 0
    started_uploads: int = 0
    purged_objects: int = 0


def _claim(session: Session, where: Sequence, cutoff: object, limit: int) -> dict[uuid.UUID, list[uuid.UUID]]:
    """Moves ``enqueued_at`` of up to ``limit`` matching items to now; returns the claimed ones by job."""
    candidates = session.exec(
        select(JobItem.id)
        .join(Job, col(Job.id) == col(JobItem.job_id))
        .where(*where, col(Job.state).in_(ACTIVE))
        .where((col(JobItem.enqueued_at) < cutoff) | col(JobItem.enqueued_at).is_(None))
        .limit(limit)
    ).all()
    if not candidates:
        return {}
    rows = session.exec(
        update(JobItem)
        .where(col(JobItem.id).in_(candidates), *where)
        .where((col(JobItem.enqueued_at) < cutoff) | col(JobItem.enqueued_at).is_(None))
        .values(enqueued_at=utcnow())
        .returning(col(JobItem.job_id), col(JobItem.id))
    ).all()
    session.commit()
    by_job: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for job_id, item_id in rows:
        by_job[job_id].append(item_id)
    return by_job


def sweep(
    session: Session,
    *,
    enqueue_classify: Enqueue,
    enqueue_explain: Enqueue,
    deadline_s: float,
    upload_timeout_s: float = 3600,
    limit: int = 10_000,
    enqueue_webhook: EnqueueWebhook | None = None,
    redeliver_after_s: float = 300,
    store: ObjectStore | None = None,
    retention_s: float | None = None,
    awaiting_timeout_s: float | None = None,
) -> SweepReport:
    """One round: re-enqueues overdue work and finishes jobs that have nothing left; returns the counts.

    ``enqueue_webhook`` hands the webhooks of jobs this round finishes to the webhooks queue, and
    re-sends those left pending past ``redeliver_after_s`` (None: neither, they stay in the outbox).
    """
    cutoff = utcnow() - timedelta(seconds=deadline_s)
    report = SweepReport()
    _requeue(session, report, enqueue_classify, enqueue_explain, cutoff=cutoff, deadline_s=deadline_s, limit=limit)
    _close_stale(session, report, enqueue_webhook, cutoff=cutoff, upload_timeout_s=upload_timeout_s, limit=limit)
    if enqueue_webhook is not None:
        report.webhooks += outbox.resend_overdue(session, enqueue_webhook, after_s=redeliver_after_s, limit=limit)
    if store is not None and awaiting_timeout_s is not None:
        report.started_uploads += _start_abandoned(
            session, store, enqueue_classify, enqueue_webhook, awaiting_timeout_s, limit
        )
    if store is not None and retention_s is not None:
        report.purged_jobs, report.purged_objects = purge_expired(session, store, older_than_s=retention_s)
    return report


def _requeue(
    session: Session,
    report: SweepReport,
    enqueue_classify: Enqueue,
    enqueue_explain: Enqueue,
    *,
    cutoff: datetime,
    deadline_s: float,
    limit: int,
) -> None:
    """Re-enqueues items that waited past the deadline to be classified or explained."""
    # From the last start, not only the last send: a chunk a worker started recently is in hand, however
    # long it waited in the queue before that.
    queued = [
        col(JobItem.status) == ItemStatus.QUEUED,
        col(JobItem.started_at).is_(None) | (col(JobItem.started_at) < cutoff),
    ]
    for job_id, ids in _claim(session, queued, cutoff, limit).items():
        enqueue_classify(job_id, ids)
        report.classify += len(ids)
        logger.warning(
            "sweeper: job %s: %s items waited past %ss to be classified; enqueued again", job_id, len(ids), deadline_s
        )
    explain_where = [col(JobItem.status) == ItemStatus.DONE, col(JobItem.explain_status) == ExplainStatus.PENDING]
    for job_id, ids in _claim(session, explain_where, cutoff, limit).items():
        enqueue_explain(job_id, ids)
        report.explain += len(ids)
        logger.warning(
            "sweeper: job %s: %s items waited past %ss to be explained; enqueued again", job_id, len(ids), deadline_s
        )


def _close_stale(
    session: Session,
    report: SweepReport,
    enqueue_webhook: EnqueueWebhook | None,
    *,
    cutoff: datetime,
    upload_timeout_s: float,
    limit: int,
) -> None:
    """Closes abandoned uploads and finishes jobs with nothing left in flight that nobody closed."""
    # A multipart upload's job keeps total 0 until the request has stored its last image; an API that
    # died mid-upload leaves it so. Past the upload timeout it keeps the images it has, and says why.
    abandoned = session.exec(
        update(Job)
        .where(
            col(Job.state).in_(ACTIVE),
            col(Job.total) == 0,
            col(Job.created_at) < utcnow() - timedelta(seconds=upload_timeout_s),
        )
        .values(
            total=select(func.count()).where(col(JobItem.job_id) == col(Job.id)).scalar_subquery(),
            error="the upload request ended before all of its images were stored",
        )
        .returning(col(Job.id))
    ).all()
    session.commit()
    report.abandoned_uploads += len(abandoned)
    stale: list[uuid.UUID] = [row[0] for row in abandoned]
    stale += session.exec(
        select(Job.id).where(col(Job.state).in_(ACTIVE), col(Job.created_at) < cutoff).limit(limit)
    ).all()
    for job_id in stale:
        if finish(session, job_id=job_id, enqueue_webhook=enqueue_webhook) is not None:
            report.finished_jobs += 1


def _start_abandoned(
    session: Session,
    store: ObjectStore,
    enqueue_classify: Enqueue,
    enqueue_webhook: EnqueueWebhook | None,
    awaiting_timeout_s: float,
    limit: int,
) -> int:
    """Starts presigned jobs whose client never called start (it died, or gave up) once every URL has
    expired: nothing more can arrive, so each is started with what did. Returns how many."""
    started = 0
    for job in session.exec(
        select(Job)
        .where(
            col(Job.state) == JobState.AWAITING_UPLOAD,
            col(Job.created_at) < utcnow() - timedelta(seconds=awaiting_timeout_s),
        )
        .limit(limit)
    ).all():
        try:
            start_job(session, store, enqueue_classify, job=job, enqueue_webhook=enqueue_webhook)
            started += 1
            logger.warning("sweeper: job %s waited past %ss for its start; started it", job.id, awaiting_timeout_s)
        except JobStateError:
            session.rollback()  # started or cancelled meanwhile
    return started


def run(every_s: float | None = None, once: bool = False) -> int:
    """``fakescope sweep``: a sweep every ``every_s`` seconds (settings: ``sweep_every_s``) until stopped."""
    from fakescope.db.engine import new_session
    from fakescope.settings import get_settings
    from fakescope.storage import get_store
    from fakescope.tasks import Enqueuer, make_celery

    cfg = get_settings()
    app = make_celery(cfg)
    enqueuer = Enqueuer(app, cfg)
    store = get_store(cfg)
    while True:
        try:
            with new_session(cfg.sqlalchemy_url) as session:
                rep = sweep(
                    session,
                    enqueue_classify=enqueuer.classify,
                    enqueue_explain=enqueuer.explain,
                    deadline_s=cfg.sweep_after,
                    upload_timeout_s=cfg.upload_timeout_s,
                    enqueue_webhook=enqueuer.webhook,
                    redeliver_after_s=cfg.callback.redeliver_after_s,
                    store=store,
                    retention_s=cfg.retention_days * 86400 if cfg.retention_days else None,
                    awaiting_timeout_s=cfg.presign_expiry_s + cfg.upload_timeout_s,
                )
            logger.info("sweep: %s", rep)
        except Exception:
            # A database or broker outage: log it and try again next round; the sweeper must outlive it.
            logger.exception("sweep failed")
            if once:
                return 1
        if once:
            return 0
        time.sleep(every_s or cfg.sweep_every_s)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="fakescope sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--every", type=float, help="seconds between sweeps (default: FAKESCOPE_SWEEP_EVERY_S, 60)")
    p.add_argument("--once", action="store_true", help="one sweep, then exit (cron)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args.every, args.once)
