"""Creating jobs: from a multipart upload (stored in shards, a window at a time), from presigned URLs
(one per image or one per shard), and the start of a presigned job once its images are uploaded.

Idempotency keys are bound here: a key names the first request made with it, and a retry of that
request gets the same job; a reuse with another request is refused.
"""

from __future__ import annotations

import hashlib
import json
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

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from fakescope.db.models import (
    SHARD_MAX_BYTES,
    ItemStatus,
    Job,
    JobItem,
    JobState,
    storable_name,
    utcnow,
)
from fakescope.imageio import ARCHIVE_SUFFIXES, DEFAULT_MAX_BYTES, ImageError, InputItem, iter_inputs
from fakescope.service import Enqueue, webhooks
from fakescope.service.budget import ByteBudget, Lease
from fakescope.service.jobs import JobStateError, finish
from fakescope.storage import ObjectStore, StorageError, original_key, shard_key

__all__ = [
    "UPLOAD_WINDOW",
    "UPLOAD_WINDOW_BYTES",
    "IdempotencyConflict",
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


class IdempotencyConflict(ValueError):
    """The idempotency key was first used with another request (another route, other files or options)."""


def request_fingerprint(route: str, **request: object) -> str:
    """SHA-256 of ``route`` and the request's canonical JSON: what an idempotency key is bound to."""
    return hashlib.sha256(json.dumps({"route": route, **request}, sort_keys=True, default=str).encode()).hexdigest()


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


def _by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str | None) -> Job | None:
    if key is None:
        return None
    return session.exec(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)).first()


def _replayed(session: Session, tenant_id: uuid.UUID, key: str | None, fingerprint: str | None) -> Job | None:
    existing = _by_idempotency_key(session, tenant_id, key)
    if existing is not None and fingerprint and existing.request_fingerprint not in (None, fingerprint):
        raise IdempotencyConflict("Idempotency-Key was already used with a different request")
    return existing


def _new_job(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    state: JobState,
    explain: bool,
    callback_url: str | None,
    idempotency_key: str | None,
    overlays: bool = True,
    fingerprint: str | None = None,
) -> tuple[Job, bool]:
    """Inserts the job row first, so a concurrent retry with the same key finds it (or loses the race).

    Raises:
        IdempotencyConflict: the key's job was made by a request with another ``fingerprint``.
    """
    existing = _replayed(session, tenant_id, idempotency_key, fingerprint)
    if existing is not None:
        return existing, False
    job = Job(
        tenant_id=tenant_id,
        state=state,
        explain=explain,
        overlays=overlays,
        callback_url=callback_url,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint if idempotency_key else None,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = _replayed(session, tenant_id, idempotency_key, fingerprint)
        if existing is None:
            raise
        return existing, False
    session.refresh(job)
    return job, True


Location = tuple[str, int | None, int | None]  # an original's object key, and its offset and length in a shard


def _known_originals(session: Session, tenant_id: uuid.UUID, sha256s: set[str | None]) -> dict[str, Location]:
    """Where originals this tenant already stored lie, by content hash (one of each)."""
    shas = [h for h in sha256s if h]
    if not shas:
        return {}
    rows = session.exec(
        select(JobItem.sha256, JobItem.object_key, JobItem.object_offset, JobItem.object_length)
        .join(Job, col(Job.id) == col(JobItem.job_id))
        .where(col(Job.tenant_id) == tenant_id, col(JobItem.sha256).in_(shas))
    ).all()
    # The query matched non-empty hashes, so `sha` is never None; the check only narrows its type.
    return {sha: (key, off, n) for sha, key, off, n in rows if sha is not None}


def create_job(
    session: Session,
    store: ObjectStore,
    enqueue: Enqueue,
    *,
    tenant_id: uuid.UUID,
    inputs: Iterable[InputItem],
    explain: bool = False,
    overlays: bool = True,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    max_items: int = 100_000,
    fingerprint: str | None = None,
    budget: ByteBudget | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[Job, bool]:
    """Stores every input's bytes, one item row each, and enqueues the classify chunks.

    ``budget``: the process's bound on upload bytes held at once (see :mod:`fakescope.service.budget`);
    each image's bytes are reserved from it before they are read (from its size where known, else
    ``max_bytes``, the per-image cap) and given back once its window is stored. Raises
    :class:`~fakescope.service.budget.UploadBusy` when other uploads hold it all for too long; the job
    is removed then, as after any failed upload.

    Bytes this tenant already stored (same SHA-256) are not stored again: the item points at the
    existing object, which is what makes a resubmitted batch cheap (the workers then answer it from
    the result cache).

    Returns the job and whether it was created (False: an earlier request with the same
    ``idempotency_key`` made it, and nothing new was stored). An input that cannot be read (an
    oversized archive member, a corrupt archive) becomes a failed item with its reason; images are
    decoded by the workers, which fail bad ones the same way.
    """
    job, created = _new_job(
        session,
        tenant_id=tenant_id,
        state=JobState.QUEUED,
        explain=explain,
        overlays=overlays,
        callback_url=callback_url,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
    )
    if not created:
        return job, False
    job_id = job.id
    lease = Lease(budget)
    try:
        with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload") as pool:
            ingest = _Ingest(session, store, enqueue, job, pool, lease, max_items=max_items, max_bytes=max_bytes)
            n_rows, n_queued = ingest.run(inputs)
        if not n_rows:
            job.state, job.error, job.finished_at = JobState.FAILED, "no images in the upload", utcnow()
            if job.callback_url:  # finished here, not by finalize_if_done: the outbox row is written here too
                job.callback_status, job.callback_sent_at = webhooks.PENDING, utcnow()
        job.total = n_rows
        session.add(job)
        session.commit()
        if not n_rows and job.callback_url:
            webhooks.announce(job_id)
    except BaseException:
        # The request fails (a broker or object store outage mid-upload): it was not accepted, so nothing of it
        # stays. Chunks already sent find their job gone and do nothing; a retry with the same
        # Idempotency-Key starts afresh. If the database is what failed, the sweeper closes the job later.
        session.rollback()
        try:
            session.exec(delete(Job).where(col(Job.id) == job_id))
            session.commit()
        except SQLAlchemyError:
            logger.warning("job %s: could not remove the job of a failed upload", job_id, exc_info=True)
        raise
    finally:
        lease.close()
    finish(session, job_id=job.id)  # the workers may have finished every chunk before the total was known
    session.refresh(job)
    logger.info("job %s: %s items, %s queued", job.id, n_rows, n_queued)
    return job, True


@dataclass
class _Row:
    """An item row of a multipart upload, as one statement per window inserts it (no ORM object: at
    256 rows a window, building and flushing ORM objects cost the API more than the rest of an upload)."""

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
            table = JobItem.__table__  # type: ignore[attr-defined]
            self.session.connection().execute(insert(table), [{**asdict(r), "job_id": self.job_id} for r in rows])
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
        first = True
        cap = self.max_bytes + 1
        while group := list(islice(numbered, UPLOAD_THREADS)):
            if group[-1][0] >= self.max_items:
                group = [(p, it) for p, it in group if p < self.max_items]
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
            if self.job.error:
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


def create_upload_job(
    session: Session,
    store: ObjectStore,
    *,
    tenant_id: uuid.UUID,
    names: Sequence[str] | None = None,
    shards: Sequence[Sequence[tuple[str, int, int]]] | None = None,
    explain: bool = False,
    overlays: bool = True,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    expires_s: int = 3600,
) -> tuple[Job, list[tuple[JobItem, str]], bool]:
    """A job waiting for its images: one item per image, and presigned PUT URLs.

    With ``names``: one URL per image, returned with its item. With ``shards`` (each a list of
    ``(name, offset, length)``, a tar's members): one URL per shard, returned with the shard's first
    item; every item of the shard points at its range of that one object, so the client makes one
    request per shard and a worker one ranged read per chunk.
    """
    if (names is None) == (shards is None):
        raise ValueError("give either names or shards")
    layout: dict[str, object] = (
        {"names": list(names)} if names is not None else {"shards": [list(s) for s in shards or []]}
    )
    fingerprint = request_fingerprint(
        "uploads", **layout, explain=explain, overlays=overlays, callback_url=callback_url
    )
    job, created = _new_job(
        session,
        tenant_id=tenant_id,
        state=JobState.AWAITING_UPLOAD,
        explain=explain,
        overlays=overlays,
        callback_url=callback_url,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
    )
    if created:
        waiting = ItemStatus.AWAITING_UPLOAD
        if names is not None:
            rows = [
                JobItem(job_id=job.id, position=i, name=n, object_key=original_key(job.id, i), status=waiting)
                for i, n in enumerate(names)
            ]
        else:
            members = [(shard_key(job.id, s), m) for s, shard in enumerate(shards or []) for m in shard]
            rows = [
                JobItem(
                    job_id=job.id,
                    position=i,
                    name=name,
                    object_key=key,
                    object_offset=offset,
                    object_length=length,
                    status=waiting,
                )
                for i, (key, (name, offset, length)) in enumerate(members)
            ]
        job.total = len(rows)
        session.add_all(rows)
        session.add(job)
        session.commit()
        session.refresh(job)
    items = session.exec(select(JobItem).where(JobItem.job_id == job.id).order_by(col(JobItem.position))).all()
    if items and items[0].object_offset is None:
        return job, [(it, store.presign_put(it.object_key, expires_s)) for it in items], created
    firsts: dict[str, JobItem] = {}
    for it in items:
        firsts.setdefault(it.object_key, it)
    return job, [(it, store.presign_put(key, expires_s)) for key, it in firsts.items()], created


def start_job(
    session: Session,
    store: ObjectStore,
    enqueue: Enqueue,
    *,
    job: Job,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Job:
    """Queues the uploaded items of a presigned job; an item whose object is missing fails as not
    uploaded, and one over ``max_bytes`` (a presigned PUT cannot be capped as it is sent) fails as too
    large and its object is deleted, so no worker ever reads it.

    The objects are checked first (a HEAD each), with nothing changed: an object-store error part-way
    (it propagates) leaves the job awaiting its start, and a retry starts it. Then the job's claim and
    every item's new state commit together, each conditional on the state it expects, so a cancel that
    landed meanwhile wins and is never undone.
    """
    if job.state != JobState.AWAITING_UPLOAD:
        raise JobStateError("Job already started")
    items = session.exec(
        select(JobItem.id, JobItem.object_key, JobItem.object_offset, JobItem.object_length).where(
            JobItem.job_id == job.id, JobItem.status == ItemStatus.AWAITING_UPLOAD
        )
    ).all()
    keys = sorted({row[1] for row in items})  # a shard's items share one object: one HEAD for them all
    with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="start") as pool:
        size_of = dict(zip(keys, pool.map(store.size, keys), strict=True))
    queued: list[uuid.UUID] = []
    failed: dict[str, list[uuid.UUID]] = {}  # reason: items
    doomed: set[str] = set()  # objects no worker may read: deleted once the job has started
    for item_id, key, offset, length in items:
        size = size_of[key]
        if offset is not None and size is not None and size > SHARD_MAX_BYTES:
            # The whole shard: a presigned PUT cannot cap its size as it is sent.
            failed.setdefault(f"shard is over the limit of {SHARD_MAX_BYTES} bytes", []).append(item_id)
            doomed.add(key)
        elif size is None or (offset is not None and offset + (length or 0) > size):
            failed.setdefault("image was not uploaded", []).append(item_id)  # or past the end of its shard
        elif (length or 0 if offset is not None else size) > max_bytes:
            failed.setdefault(f"file is over the limit of {max_bytes} bytes", []).append(item_id)
            if offset is None:
                doomed.add(key)
        else:
            queued.append(item_id)
    claimed = session.exec(
        update(Job)
        .where(col(Job.id) == job.id, col(Job.state) == JobState.AWAITING_UPLOAD)
        .values(state=JobState.QUEUED)
    )
    if claimed.rowcount != 1:
        session.rollback()
        session.refresh(job)
        raise JobStateError("Job was cancelled" if job.state == JobState.CANCELLED else "Job already started")
    waiting = col(JobItem.status) == ItemStatus.AWAITING_UPLOAD
    if queued:
        session.exec(
            update(JobItem)
            .where(col(JobItem.id).in_(queued), waiting)
            .values(status=ItemStatus.QUEUED, enqueued_at=utcnow())
        )
    for error, ids in failed.items():
        session.exec(
            update(JobItem)
            .where(col(JobItem.id).in_(ids), waiting)
            .values(status=ItemStatus.FAILED, error=error, finished_at=utcnow())
        )
    session.commit()
    if doomed:
        try:
            store.delete(sorted(doomed))
        except StorageError:
            logger.warning("job %s: could not delete %s oversized uploads", job.id, len(doomed), exc_info=True)
    enqueue(job.id, queued)
    if not queued:
        finish(session, job_id=job.id)
    session.refresh(job)
    return job
