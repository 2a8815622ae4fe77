"""Creating jobs from a multipart upload: read a window at a time within the process's byte budget,
each window stored as one shard, its rows inserted in one statement and its chunks enqueued at once.

The one import place for creating jobs: presigned jobs (fakescope.service.presigned) and idempotency
(fakescope.service.idempotency) are re-exported here.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import IO

from sqlalchemy import delete, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from fakescope.db.models import (
    ItemStatus,
    Job,
    JobItem,
    JobState,
    storable_name,
    utcnow,
)
from fakescope.imageio import ARCHIVE_SUFFIXES, DEFAULT_MAX_BYTES, ImageError, InputItem, iter_inputs
from fakescope.service import Enqueue, EnqueueWebhook, outbox
from fakescope.service.budget import ByteBudget, Lease
from fakescope.service.idempotency import IdempotencyConflict, JobRequest, new_job, request_fingerprint
from fakescope.service.jobs import finish
from fakescope.service.presigned import create_upload_job, start_job
from fakescope.service.rows import insert_items
from fakescope.storage import ObjectStore, original_key, shard_key

__all__ = [
    "UPLOAD_WINDOW",
    "UPLOAD_WINDOW_BYTES",
    "IdempotencyConflict",
    "JobRequest",
    "create_job",
    "create_upload_job",
    "expand_uploads",
    "request_fingerprint",
    "start_job",
]

logger = logging.getLogger(__name__)

UPLOAD_THREADS = 8
UPLOAD_WINDOW = 256
# The first window is smaller (one classify chunk at the default chunk size): the workers start on it
# while the API stores the rest, instead of idling until 256 images are in.
FIRST_UPLOAD_WINDOW = 128
UPLOAD_WINDOW_BYTES = 256 * 1024**2


def _read_capped(f: IO[bytes], max_bytes: int) -> Callable[[], bytes]:
    def read() -> bytes:
        data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ImageError(f"file is over the limit of {max_bytes} bytes")
        return data

    return read


def _length(f: IO[bytes]) -> int | None:
    """The file's length, if it can seek (an upload spooled to memory or disk can)."""
    try:
        here = f.tell()
        end = f.seek(0, 2)
        f.seek(here)
        return end - here
    except (OSError, ValueError):
        return None


def expand_uploads(
    uploads: Sequence[tuple[str, IO[bytes]]], workdir: Path, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[InputItem]:
    """One input per uploaded image and per member of each uploaded zip/tar archive.

    Archives are copied to ``workdir`` under their own file name, so members are named
    ``"batch.zip/cat/1.png"`` exactly as ``fakescope scan batch.zip`` names them.
    """
    for i, (filename, f) in enumerate(uploads):
        name = PurePosixPath((filename or f"upload-{i}").replace("\\", "/")).name or f"upload-{i}"
        if name.lower().endswith(ARCHIVE_SUFFIXES):
            folder = workdir / f"{i:05d}"
            folder.mkdir(parents=True)
            with (folder / name).open("wb") as out:
                shutil.copyfileobj(f, out)
            yield from iter_inputs([folder / name], max_bytes=max_bytes)
        else:
            yield InputItem(name, _read_capped(f, max_bytes), size=_length(f))


Location = tuple[str, int | None, int | None]  # an original's object key, and its offset and length in a shard


def _known_originals(session: Session, tenant_id: uuid.UUID, sha256s: set[str | None]) -> dict[str, Location]:
    """Where originals this tenant already stored lie, by content hash (one of each)."""
    shas = [h for h in sha256s if h]
    if not shas:
        return {}
    # One row per hash, chosen by the database, however many copies the tenant sent.
    copies = (
        sa_select(  # SQLAlchemy's select: sqlmodel's is typed for at most four columns
            col(JobItem.sha256).label("sha256"),
            col(JobItem.object_key).label("object_key"),
            col(JobItem.object_offset).label("object_offset"),
            col(JobItem.object_length).label("object_length"),
            func.row_number().over(partition_by=col(JobItem.sha256), order_by=col(JobItem.id)).label("rank"),
        )
        .join(Job, col(Job.id) == col(JobItem.job_id))
        .where(col(Job.tenant_id) == tenant_id, col(JobItem.sha256).in_(shas))
        .subquery()
    )
    rows = session.exec(
        select(copies.c.sha256, copies.c.object_key, copies.c.object_offset, copies.c.object_length).where(
            copies.c.rank == 1
        )
    ).all()
    # The query matched non-empty hashes, so `sha` is never None; the check only narrows its type.
    return {sha: (key, off, n) for sha, key, off, n in rows if sha is not None}


def create_job(
    session: Session,
    store: ObjectStore,
    enqueue: Enqueue,
    request: JobRequest,
    *,
    inputs: Iterable[InputItem],
    max_items: int = 100_000,
    fingerprint: str | None = None,
    budget: ByteBudget | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    enqueue_webhook: EnqueueWebhook | None = None,
) -> tuple[Job, bool]:
    """Stores every input's bytes, one item row each, and enqueues the classify chunks.

    ``fingerprint``: what the request's idempotency key is bound to (:meth:`JobRequest.fingerprint`).

    ``budget``: the process's bound on upload bytes held at once (see :mod:`fakescope.service.budget`);
    each image's bytes are reserved from it before they are read (from its size where known, else
    ``max_bytes``, the per-image cap) and given back once its window is stored. Raises
    :class:`~fakescope.service.budget.UploadBusy` when other uploads hold it all for too long; the job
    is removed then, as after any failed upload.

    Bytes this tenant already stored (same SHA-256) are not stored again: the item points at the
    existing object (the workers then answer it from the result cache).

    Returns the job and whether it was created (False: an earlier request with the same
    ``idempotency_key`` made it, and nothing new was stored). An input that cannot be read (an
    oversized archive member, a corrupt archive) becomes a failed item with its reason; images are
    decoded by the workers, which fail bad ones the same way. A job that finishes here (an upload
    with no images, or one the workers already finished) hands its webhook to ``enqueue_webhook``.
    """
    job, created = new_job(session, request, state=JobState.QUEUED, fingerprint=fingerprint)
    if not created:
        return job, False
    job_id = job.id
    lease = Lease(budget)
    try:
        with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload") as pool:
            ingest = _Ingest(session, store, enqueue, job, pool, lease, max_items=max_items, max_bytes=max_bytes)
            n_rows, n_queued = ingest.run(inputs)
        _set_total(session, job, n_rows, enqueue_webhook)
    except BaseException:
        _discard(session, job_id)
        raise
    finally:
        lease.close()
    # The workers may have finished every chunk before the total was known.
    finish(session, job_id=job.id, enqueue_webhook=enqueue_webhook)
    session.refresh(job)
    logger.info("job %s: %s items, %s queued", job.id, n_rows, n_queued)
    return job, True


def _set_total(session: Session, job: Job, n_rows: int, enqueue_webhook: EnqueueWebhook | None) -> None:
    """Records the upload's size, which lets the job finish; an upload with no images fails here (and
    puts its webhook in the outbox in the same statement: it is finished here, not by finalize_if_done)."""
    failed = {"state": JobState.FAILED, "error": "no images in the upload", "finished_at": utcnow()}
    values = {"total": n_rows} if n_rows else {"total": 0, **failed, **outbox.pending_values()}
    session.exec(update(Job).where(col(Job.id) == job.id).values(**values))
    session.commit()
    if not n_rows:
        outbox.announce(enqueue_webhook, job)


def _discard(session: Session, job_id: uuid.UUID) -> None:
    """Removes the job of a failed upload (a broker or object store outage mid-upload): the request was
    not accepted, so nothing of it stays. Chunks already sent find their job gone and do nothing; a
    retry with the same Idempotency-Key starts afresh. If the database is what failed, the sweeper
    closes the job later."""
    session.rollback()
    try:
        session.exec(delete(Job).where(col(Job.id) == job_id))
        session.commit()
    except SQLAlchemyError:
        logger.warning("job %s: could not remove the job of a failed upload", job_id, exc_info=True)


@dataclass
class _Row:
    """An item row of a multipart upload, as :func:`~fakescope.service.rows.insert_items` inserts a
    window of them in one statement (no ORM object: at 256 rows a window, building and flushing ORM
    objects cost the API more than the rest of an upload)."""

    position: int
    name: str
    object_key: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    status: str = ItemStatus.QUEUED
    error: str | None = None
    finished_at: datetime | None = None
    sha256: str | None = None
    object_offset: int | None = None
    object_length: int | None = None


Window = list[tuple[_Row, bytes | None]]


class _Ingest:
    """One multipart upload being stored: read in groups on a thread pool, a window at a time.

    A window (up to UPLOAD_WINDOW images or UPLOAD_WINDOW_BYTES, whichever comes first: a small archive
    of large, highly compressible members must not make the API hold gigabytes at once) is stored as
    one shard, its rows committed and its chunks enqueued as soon as it is, so the workers classify
    while the rest of the upload is still being stored. ``job.total`` stays 0 until the last window,
    which is what keeps a worker from finishing the job early (finalize_if_done).
    """

    def __init__(
        self,
        session: Session,
        store: ObjectStore,
        enqueue: Enqueue,
        job: Job,
        pool: ThreadPoolExecutor,
        lease: Lease,
        *,
        max_items: int,
        max_bytes: int,
    ) -> None:
        self.session, self.store, self.enqueue, self.job = session, store, enqueue, job
        self.job_id, self.tenant_id = job.id, job.tenant_id
        self.pool, self.lease = pool, lease
        self.max_items, self.max_bytes = max_items, max_bytes

    def run(self, inputs: Iterable[InputItem]) -> tuple[int, int]:
        """Stores and enqueues every window; returns (rows written, items queued)."""
        n_rows = n_queued = 0
        for index, (window, held) in enumerate(self.windows(inputs)):
            rows = self.store_window(index, window)
            self.lease.give_back(held)  # the window's bytes are stored and let go
            state = self.session.exec(select(Job.state).where(col(Job.id) == self.job_id)).one()
            if state == JobState.CANCELLED:
                break  # cancelled while its upload was being stored (the id is known to an idempotent retry)
            queued = [r.id for r in rows if r.status == ItemStatus.QUEUED]
            insert_items(self.session, job_id=self.job_id, rows=[asdict(r) for r in rows])
            self.session.commit()
            self.enqueue(self.job_id, queued)
            n_rows, n_queued = n_rows + len(rows), n_queued + len(queued)
        return n_rows, n_queued

    def read_one(self, position: int, item: InputItem) -> tuple[_Row, bytes | None]:
        # Names are the client's: a NUL or an over-long name is made storable rather than failing the job.
        row = _Row(position=position, name=storable_name(item.name), object_key=original_key(self.job_id, position))
        try:
            data = item.read()
        except ImageError as e:
            row.status, row.error, row.finished_at = ItemStatus.FAILED, str(e), utcnow()
            return row, None
        row.sha256 = hashlib.sha256(data).hexdigest()
        return row, data

    def windows(self, inputs: Iterable[InputItem]) -> Iterator[tuple[Window, int]]:
        """The upload's windows, each with the bytes it holds of the lease (the consumer gives them back
        once it is stored). Each group's bytes are reserved before they are read."""
        numbered = enumerate(inputs)
        window: Window = []
        held = 0
        first, over = True, False
        cap = self.max_bytes + 1
        while group := list(islice(numbered, UPLOAD_THREADS)):
            if group[-1][0] >= self.max_items:
                group = [(p, it) for p, it in group if p < self.max_items]
                over = True
                self.job.error = (
                    f"the upload has more than {self.max_items} images; the first {self.max_items} were kept"
                )
            need = sum(min(cap, it.size if it.size is not None else cap) for _, it in group)
            if not self.lease.reserve(need, wait=not window):
                # Store what this request holds before waiting for others: never wait while holding.
                yield window, held
                window, held = [], 0
                self.lease.reserve(need, wait=True)
            got = 0
            for row, data in self.pool.map(lambda pi: self.read_one(*pi), group):
                window.append((row, data))
                got += len(data or b"")
            self.lease.give_back(need - got)  # the reservation, trimmed to what was read
            held += got
            size = FIRST_UPLOAD_WINDOW if first else UPLOAD_WINDOW
            if len(window) >= size or held >= UPLOAD_WINDOW_BYTES:
                first = False
                yield window, held
                window, held = [], 0
            if over:
                break  # the rest of the upload is not read at all
        if window:
            yield window, held

    def store_window(self, index: int, window: Window) -> list[_Row]:
        """Stores the window's new originals as one shard (one request for up to 256 images, one ranged
        read for a worker's chunk of them); bytes this tenant already stored (same SHA-256, here or in
        an earlier upload) are pointed at, not stored again. Empties ``window``; returns its rows."""
        known = _known_originals(self.session, self.tenant_id, {r.sha256 for r, d in window if d is not None})
        shard = shard_key(self.job_id, index)
        parts: list[bytes] = []
        offset = 0
        for row, data in window:
            if data is None or row.sha256 is None:
                continue
            if row.sha256 not in known:
                known[row.sha256] = (shard, offset, len(data))
                parts.append(data)
                offset += len(data)
            row.object_key, row.object_offset, row.object_length = known[row.sha256]
        if parts:
            self.store.put_parts(shard, parts)
        rows = [r for r, _ in window]
        window.clear()
        return rows
