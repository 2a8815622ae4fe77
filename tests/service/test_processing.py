"""Service functions the workers run, called directly against real Postgres and the S3 server."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, cast, event, func, update
from sqlmodel import Session, col, select

from fakescope.db.engine import get_engine
from fakescope.db.models import ItemStatus, Job, JobItem, JobState, utcnow
from fakescope.detector import Detector
from fakescope.imageio import InputItem
from fakescope.service import jobs as svc
from fakescope.service import uploads
from fakescope.service.idempotency import JobRequest
from fakescope.service.overlays import item_overlay
from fakescope.service.processing import cached_results, classify_chunk, release_items
from fakescope.service.tenants import authenticate, create_api_key, hash_key
from fakescope.storage import ObjectStore, ObjectTooLarge, StorageError
from tests.utils.chunks import Chunks
from tests.utils.stack import ServiceEnv, png_bytes


@pytest.fixture(scope="module")
def detector(tiny_checkpoint: Path) -> Detector:
    return Detector.load(tiny_checkpoint, device="cpu")


def _tenant(env: ServiceEnv) -> uuid.UUID:
    with env.session() as session:
        tenant, _ = create_api_key(session, tenant_name=f"svc-{uuid.uuid4().hex[:6]}")
        return tenant.id


def _job(env: ServiceEnv, n: int, tenant_id: uuid.UUID | None = None, seeds: Sequence[int] | None = None) -> Chunks:
    chunks = Chunks()
    tenant_id = tenant_id or _tenant(env)
    seeds = seeds if seeds is not None else [300 + i for i in range(n)]
    with env.session() as session:
        items = [InputItem(f"{s}.png", functools.partial(png_bytes, s)) for s in seeds]
        _, created = uploads.create_job(session, env.store, chunks, JobRequest(tenant_id=tenant_id), inputs=items)
        assert created
    return chunks


def _get_job(session: Session, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    assert job is not None
    return job


def _classify(env: ServiceEnv, detector: Detector, chunks: Chunks) -> dict[str, JobItem]:
    ((job_id, ids),) = chunks.sent
    with env.session() as session:
        classify_chunk(session, env.store, detector, job_id=job_id, item_ids=ids)
    with env.session() as session:  # a new one: the one above still holds the items as they started
        items = session.exec(select(JobItem).where(JobItem.job_id == job_id)).all()
    return {i.name: i for i in items}


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
        state = _get_job(session, job_id).state
    assert state == JobState.SUCCEEDED
    assert sorted(i.attempts for i in items) == [1] * 6
    # A grid each, no overlay PNG: nobody asked for one yet, so nothing was encoded or stored.
    assert all(i.status == ItemStatus.DONE and i.cam_grid and i.overlay_key is None for i in items)
    assert service_env.store.list(f"jobs/{job_id}/overlays/") == []


def test_cancelled_items_are_not_processed(service_env: ServiceEnv, detector: Detector) -> None:
    chunks = _job(service_env, 4)
    ((job_id, ids),) = chunks.sent
    with service_env.session() as session:
        svc.cancel_job(session, job=_get_job(session, job_id))
        assert classify_chunk(session, service_env.store, detector, job_id=job_id, item_ids=ids) == 0
        items = session.exec(select(JobItem).where(JobItem.job_id == job_id)).all()
        state = _get_job(session, job_id).state
    assert state == JobState.CANCELLED
    assert {i.status for i in items} == {ItemStatus.CANCELLED}
    assert all(i.prediction is None for i in items)
    assert service_env.store.list(f"jobs/{job_id}/overlays/") == []


def test_seen_images_come_from_the_tenants_cache_with_identical_results(
    service_env: ServiceEnv, detector: Detector
) -> None:
    tenant = _tenant(service_env)
    first = _classify(service_env, detector, _job(service_env, 6, tenant, seeds=range(400, 406)))
    assert all(i.sha256 and not i.cached for i in first.values())

    again = _classify(service_env, detector, _job(service_env, 7, tenant, seeds=range(400, 407)))
    assert {n for n, i in again.items() if i.cached} == set(first)
    assert not again["406.png"].cached and again["406.png"].prediction is not None
    # The same bytes are not stored twice either: the new items point at the originals already stored.
    fields = (
        "prediction",
        "fake_probability",
        "width",
        "height",
        "cam_grid",
        "sha256",
        "model_version",
        "object_key",
    )
    for name, item in first.items():
        assert item.status == again[name].status == ItemStatus.DONE
        assert [getattr(item, f) for f in fields] == [getattr(again[name], f) for f in fields]
    with service_env.session() as session:
        for item in again.values():
            png = item_overlay(session, service_env.store, job_id=item.job_id, position=item.position)
            assert png is not None and png.startswith(b"\x89PNG")

    # Another tenant sending the same bytes learns nothing from the first one's history.
    other = _classify(service_env, detector, _job(service_env, 6, seeds=range(400, 406)))
    assert not any(i.cached for i in other.values())
    assert all(i.cam_grid and i.object_key.split("/")[1] != first["400.png"].object_key.split("/")[1]
               for i in other.values())  # fmt: skip

    # Recalibrating changes the answers, so the cache does not serve the old ones.
    recal = Detector(detector.model, dataclasses.replace(detector.meta, temperature=3.0), detector.device)
    assert recal.model_version != detector.model_version
    later = _classify(service_env, recal, _job(service_env, 6, tenant, seeds=range(400, 406)))
    assert not any(i.cached for i in later.values())
    for name, item in later.items():
        assert item.prediction == first[name].prediction
        new_p, old_p = item.fake_probability, first[name].fake_probability
        assert new_p is not None and old_p is not None
        assert abs(new_p - 0.5) < abs(old_p - 0.5) + 1e-6


def test_chunks_finished_while_the_upload_is_still_stored_do_not_close_the_job(
    service_env: ServiceEnv, detector: Detector
) -> None:
    # The upload enqueues each window as soon as it is stored; here every chunk is classified the moment
    # it is sent, so the workers finish everything they were given before the upload knows its total.
    tenant_id = _tenant(service_env)
    states: list[str] = []

    def classify_now(job_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> int:
        with service_env.session() as session:
            classify_chunk(session, service_env.store, detector, job_id=job_id, item_ids=item_ids)
            states.append(_get_job(session, job_id).state)
        return 1

    n = uploads.UPLOAD_WINDOW * 2 + 17
    with service_env.session() as session:
        items = [InputItem(f"{s}.png", functools.partial(png_bytes, s)) for s in range(9000, 9000 + n)]
        job, created = uploads.create_job(
            session, service_env.store, classify_now, JobRequest(tenant_id=tenant_id), inputs=items
        )
        assert created
        assert (job.state, job.total) == (JobState.SUCCEEDED, n)
        counts = svc.job_counts(session, job_id=job.id)
    assert states == [JobState.RUNNING] * 3  # three windows, none of which closed the job
    assert (counts.total, counts.done) == (n, n)


def test_uploads_over_the_item_limit_keep_the_first_and_say_so(
    service_env: ServiceEnv, detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[int] = []

    def item(s: int) -> InputItem:
        def read_counted() -> bytes:
            read.append(s)
            return png_bytes(s)

        return InputItem(f"{s}.png", read_counted)

    sizes: list[int] = []

    def classify_now(job_id: uuid.UUID, item_ids: Sequence[uuid.UUID]) -> int:
        sizes.append(len(item_ids))
        with service_env.session() as session:
            return classify_chunk(session, service_env.store, detector, job_id=job_id, item_ids=item_ids)

    # Windows close by bytes as well as by count: here every two images.
    monkeypatch.setattr(uploads, "UPLOAD_WINDOW_BYTES", 2 * len(png_bytes(9500)) - 1)
    with service_env.session() as session:
        job, _ = uploads.create_job(
            session,
            service_env.store,
            classify_now,
            JobRequest(tenant_id=_tenant(service_env)),
            inputs=[item(s) for s in range(9500, 9540)],
            max_items=13,
        )
    assert job.total == 13 and len(read) <= 16  # reading stops once past the limit
    assert job.state == JobState.PARTIALLY_SUCCEEDED
    assert job.error == "the upload has more than 13 images; the first 13 were kept"
    assert sum(sizes) == 13 and max(sizes) <= 8


def test_verdicts_only_jobs_store_no_overlays_and_share_the_cache_one_way(
    service_env: ServiceEnv, detector: Detector
) -> None:
    tenant = _tenant(service_env)
    seeds = range(9600, 9606)

    def run(overlays: bool) -> dict[str, JobItem]:
        chunks = Chunks()
        with service_env.session() as session:
            items = [InputItem(f"{s}.png", functools.partial(png_bytes, s)) for s in seeds]
            job, _ = uploads.create_job(
                session, service_env.store, chunks, JobRequest(tenant_id=tenant, overlays=overlays), inputs=items
            )
            assert job.overlays is overlays
        return _classify(service_env, detector, chunks)

    bare = run(overlays=False)
    assert all(i.status == ItemStatus.DONE and i.cam_grid is None and not i.cached for i in bare.values())
    # A job that wants overlays is not answered from results that have none...
    full = run(overlays=True)
    assert all(i.cam_grid and not i.cached for i in full.values())
    # ...while a verdicts-only job is answered from any earlier result of the same model.
    again = run(overlays=False)
    assert all(i.cached for i in again.values())
    for name, item in full.items():
        assert (item.prediction, item.fake_probability) == (bare[name].prediction, bare[name].fake_probability)
        assert (item.prediction, item.fake_probability) == (again[name].prediction, again[name].fake_probability)


def test_an_original_over_the_byte_limit_fails_alone_without_being_read_whole(
    service_env: ServiceEnv, detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A presigned upload can be any size: the worker reads at most the per-image limit of it.
    import fakescope.service.originals as originals

    monkeypatch.setattr(originals, "DEFAULT_MAX_BYTES", 50_000)
    chunks = _job(service_env, 3)
    ((job_id, ids),) = chunks.sent
    with service_env.session() as session:
        big = session.exec(select(JobItem).where(JobItem.job_id == job_id, JobItem.position == 1)).one()
        # Stored whole, as a presigned upload is (not in the upload window's shard).
        big.object_key, big.object_offset, big.object_length = f"jobs/{job_id}/originals/big", None, None
        session.add(big)
        session.commit()
        service_env.store.put(big.object_key, b"\0" * 5_000_000)
    store = service_env.store
    real_get = store.get
    asked: list[int | None] = []

    def spy(key: str, max_bytes: int | None = None) -> bytes:
        asked.append(max_bytes)
        return real_get(key, max_bytes=max_bytes)

    monkeypatch.setattr(store, "get", spy)
    with service_env.session() as session:
        classify_chunk(session, store, detector, job_id=job_id, item_ids=ids)
        items = sorted(session.exec(select(JobItem).where(JobItem.job_id == job_id)).all(), key=lambda i: i.position)
    assert asked and set(asked) == {50_000}
    assert items[1].status == "failed" and items[1].error == "file is over the limit of 50000 bytes"
    assert [i.status for i in (items[0], items[2])] == ["done", "done"]
    with pytest.raises(ObjectTooLarge):
        real_get(big.object_key, max_bytes=1000)


def test_an_image_that_keeps_killing_its_worker_fails_instead_of_looping(
    service_env: ServiceEnv, detector: Detector
) -> None:
    chunks = _job(service_env, 3)
    ((job_id, ids),) = chunks.sent
    with service_env.session() as session:
        # Three deliveries that started and died (the count is raised before any work): the fourth
        # fails the image with its reason and classifies the rest.
        session.exec(update(JobItem).where(col(JobItem.id) == ids[0]).values(attempts=3))
        session.commit()
        written = classify_chunk(session, service_env.store, detector, job_id=job_id, item_ids=ids, max_deliveries=3)
        items = {i.id: i for i in session.exec(select(JobItem).where(JobItem.job_id == job_id)).all()}
    assert written == 2
    assert items[ids[0]].status == ItemStatus.FAILED
    assert items[ids[0]].error == "classification was started 3 times without finishing; the image is not retried"
    assert [items[i].status for i in ids[1:]] == [ItemStatus.DONE, ItemStatus.DONE]
    assert [items[i].attempts for i in ids] == [4, 1, 1]


def test_a_retried_transient_error_gives_its_start_back(service_env: ServiceEnv) -> None:
    chunks = _job(service_env, 2)
    ((job_id, ids),) = chunks.sent
    with service_env.session() as session:
        session.exec(update(JobItem).where(col(JobItem.id).in_(ids)).values(attempts=1))
        session.commit()
        assert release_items(session, item_ids=ids) == 2
        assert release_items(session, item_ids=ids) == 0  # never below zero
        attempts = session.exec(select(JobItem.attempts).where(JobItem.job_id == job_id)).all()
    assert attempts == [0, 0]


class _FlakyStore:
    """The session's S3 store, with ``size`` failing from its ``fail_at``-th call on."""

    def __init__(self, store: ObjectStore, fail_at: int) -> None:
        self.store, self.fail_at, self.calls = store, fail_at, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def size(self, key: str) -> int | None:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise StorageError("S3 went away")
        return self.store.size(key)


def _upload_job(env: ServiceEnv, n: int) -> uuid.UUID:
    with env.session() as session:
        job, urls, _ = uploads.create_upload_job(
            session, env.store, JobRequest(_tenant(env)), names=[f"{i}.png" for i in range(n)]
        )
        for item, _url in urls[:-1]:  # the last image is never uploaded
            env.store.put(item.object_key, png_bytes(item.position))
        return job.id


def test_a_start_that_fails_part_way_changes_nothing(service_env: ServiceEnv) -> None:
    job_id = _upload_job(service_env, 4)
    chunks = Chunks()
    with service_env.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        with pytest.raises(StorageError):
            uploads.start_job(session, _FlakyStore(service_env.store, fail_at=3), chunks, job=job)  # type: ignore[arg-type]
        session.refresh(job)
        assert job.state == JobState.AWAITING_UPLOAD and chunks.sent == []
        statuses = session.exec(select(JobItem.status).where(JobItem.job_id == job_id)).all()
        assert set(statuses) == {ItemStatus.AWAITING_UPLOAD}
        # The client's retry starts it: three queued, the missing one failed with its reason.
        uploads.start_job(session, service_env.store, chunks, job=job)
        assert job.state == JobState.QUEUED and len(chunks.sent[0][1]) == 3
        errors = session.exec(
            select(JobItem.error).where(JobItem.job_id == job_id, col(JobItem.error).is_not(None))
        ).all()
        assert errors == ["image was not uploaded"]
        with pytest.raises(svc.JobStateError, match="already started"):
            uploads.start_job(session, service_env.store, chunks, job=job)


def test_a_cancel_during_a_start_is_never_undone(service_env: ServiceEnv) -> None:
    job_id = _upload_job(service_env, 3)

    class CancelWhileChecking(_FlakyStore):
        def size(self, key: str) -> int | None:
            if self.calls == 0:  # another request cancels the job while this one checks the objects
                with service_env.session() as other:
                    svc.cancel_job(other, job=_get_job(other, job_id))
            self.calls += 1
            return self.store.size(key)

    chunks = Chunks()
    with service_env.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        with pytest.raises(svc.JobStateError, match="cancelled"):
            uploads.start_job(session, CancelWhileChecking(service_env.store, 0), chunks, job=job)  # type: ignore[arg-type]
        session.refresh(job)
        statuses = session.exec(select(JobItem.status).where(JobItem.job_id == job_id)).all()
    assert job.state == JobState.CANCELLED and set(statuses) == {ItemStatus.CANCELLED} and chunks.sent == []


def test_a_presigned_upload_over_the_limit_fails_at_the_start_and_is_deleted(service_env: ServiceEnv) -> None:
    job_id = _upload_job(service_env, 3)  # 0 and 1 uploaded, 2 missing
    with service_env.session() as session:
        items = session.exec(select(JobItem).where(JobItem.job_id == job_id).order_by(col(JobItem.position))).all()
        big_key = items[1].object_key
        limit = len(png_bytes(0)) + 10
        service_env.store.put(big_key, b"x" * (limit + 1))  # the PUT URL let any size through
        chunks = Chunks()
        job = session.get(Job, job_id)
        assert job is not None
        uploads.start_job(session, service_env.store, chunks, job=job, max_bytes=limit)
        session.expire_all()
        rows = session.exec(select(JobItem).where(JobItem.job_id == job_id).order_by(col(JobItem.position))).all()
        assert [(r.status, r.error) for r in rows] == [
            (ItemStatus.QUEUED, None),
            (ItemStatus.FAILED, f"file is over the limit of {limit} bytes"),
            (ItemStatus.FAILED, "image was not uploaded"),
        ]
        assert chunks.sent == [(job_id, [rows[0].id])]
    assert service_env.store.size(big_key) is None  # no worker will ever read it


def test_retention_deletes_old_jobs_and_only_the_objects_they_alone_use(
    service_env: ServiceEnv, detector: Detector
) -> None:
    tenant = _tenant(service_env)
    old, new = _job(service_env, 2, tenant, seeds=[901, 902]), _job(service_env, 1, tenant, seeds=[901])
    for chunks in (old, new):
        _classify(service_env, detector, chunks)
    ((old_id, _),), ((new_id, _),) = old.sent, new.sent
    with service_env.session() as session:
        for position in (0, 1):  # someone looked at the old job's overlays: they are stored objects now
            assert item_overlay(session, service_env.store, job_id=old_id, position=position)
        old_items = session.exec(select(JobItem).where(JobItem.job_id == old_id)).all()
        (new_item,) = session.exec(select(JobItem).where(JobItem.job_id == new_id)).all()
        shared, alone = sorted(old_items, key=lambda i: i.name)  # 901.png is in both jobs, 902.png only in the old
        assert shared.object_key == new_item.object_key  # stored once (content-hash deduplication)
        # The new job's 901.png is the result cache's answer; had its overlay been drawn before, it would
        # point at the old job's overlay object.
        kept = {shared.object_key, new_item.overlay_key}
        gone = {alone.object_key, alone.overlay_key, shared.overlay_key} - kept
        session.exec(update(Job).where(col(Job.id) == old_id).values(finished_at=utcnow() - timedelta(days=40)))
        session.commit()
        jobs, objects = svc.purge_expired(session, service_env.store, older_than_s=30 * 86400)
        assert session.get(Job, old_id) is None and session.get(Job, new_id) is not None
        assert session.exec(select(JobItem).where(JobItem.job_id == old_id)).all() == []
    assert jobs >= 1 and objects == len(gone) >= 2
    assert not any(service_env.store.exists(k) for k in gone if k)
    assert all(service_env.store.exists(k) for k in kept if k)


def test_a_page_of_jobs_is_counted_in_one_query(service_env: ServiceEnv, detector: Detector) -> None:
    from sqlalchemy import event

    tenant = _tenant(service_env)
    done, waiting = _job(service_env, 3, tenant, seeds=[951, 952, 953]), _job(service_env, 2, tenant, seeds=[954, 955])
    _classify(service_env, detector, done)
    ids = [done.sent[0][0], waiting.sent[0][0]]
    statements: list[str] = []
    engine = get_engine(service_env.settings.sqlalchemy_url)
    listen = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listen)
    try:
        with service_env.session() as session:
            counts = svc.jobs_counts(session, job_ids=ids)
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert len([s for s in statements if "job_items" in s]) == 1
    assert (counts[ids[0]].total, counts[ids[0]].done, counts[ids[0]].queued) == (3, 3, 0)
    assert (counts[ids[1]].total, counts[ids[1]].done, counts[ids[1]].queued) == (2, 0, 2)


class _CountingStore:
    """The session's S3 store, counting the requests made through it by method."""

    def __init__(self, store: ObjectStore) -> None:
        self.store, self.calls = store, Counter[str]()

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        def counted(*args: object, **kwargs: object) -> object:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


def test_an_upload_window_is_one_shard_and_a_chunk_one_ranged_read(service_env: ServiceEnv, detector: Detector) -> None:
    tenant_id = _tenant(service_env)
    n = uploads.UPLOAD_WINDOW + 44  # two windows
    seeds = [*range(9700, 9700 + n - 2), 9700, 9701]  # the last two repeat the first two
    counting = _CountingStore(service_env.store)
    chunks = Chunks()
    with service_env.session() as session:
        items = [InputItem(f"{i}-{s}.png", functools.partial(png_bytes, s)) for i, s in enumerate(seeds)]
        job, _ = uploads.create_job(session, counting, chunks, JobRequest(tenant_id=tenant_id), inputs=items)  # type: ignore[arg-type]
    assert counting.calls == {"put_parts": 2}  # one object per window, not one per image
    with service_env.session() as session:
        rows = session.exec(select(JobItem).where(JobItem.job_id == job.id).order_by(col(JobItem.position))).all()
        assert {r.object_key for r in rows} == {f"jobs/{job.id}/shards/00000", f"jobs/{job.id}/shards/00001"}
        # The repeats point at the first copy's bytes in the first shard.
        for dup, first in ((rows[-2], rows[0]), (rows[-1], rows[1])):
            assert (dup.object_key, dup.object_offset, dup.object_length) == (
                first.object_key,
                first.object_offset,
                first.object_length,
            )
        for r, s in zip(rows, seeds, strict=True):
            assert r.object_offset is not None and r.object_length is not None
            assert service_env.store.get_range(r.object_key, r.object_offset, r.object_length) == png_bytes(s)
    counting.calls.clear()
    for job_id, ids in chunks.sent:
        with service_env.session() as session:
            classify_chunk(session, counting, detector, job_id=job_id, item_ids=ids)  # type: ignore[arg-type]
    # One ranged GET per chunk and shard (the chunks are 128 images), no whole-object GET, no PUT.
    assert counting.calls["get"] == 0 and counting.calls["put"] == 0
    assert counting.calls["get_range"] <= len(chunks.sent) + 2
    with service_env.session() as session:
        done = session.exec(select(JobItem).where(JobItem.job_id == job.id, JobItem.status == ItemStatus.DONE)).all()
    assert len(done) == n

    # The same images again: every one points at the earlier shards, nothing new is stored.
    counting.calls.clear()
    with service_env.session() as session:
        items = [InputItem(f"again-{s}.png", functools.partial(png_bytes, s)) for s in seeds[:10]]
        again, _ = uploads.create_job(session, counting, Chunks(), JobRequest(tenant_id=tenant_id), inputs=items)  # type: ignore[arg-type]
        keys = set(session.exec(select(JobItem.object_key).where(JobItem.job_id == again.id)).all())
    assert counting.calls["put_parts"] == 0 and keys == {f"jobs/{job.id}/shards/00000"}


def test_a_missing_shard_fails_its_items_with_the_reason(service_env: ServiceEnv, detector: Detector) -> None:
    chunks = _job(service_env, 3)
    ((job_id, ids),) = chunks.sent
    service_env.store.delete([f"jobs/{job_id}/shards/00000"])
    with service_env.session() as session:
        classify_chunk(session, service_env.store, detector, job_id=job_id, item_ids=ids)
        errors = session.exec(select(JobItem.error).where(JobItem.job_id == job_id)).all()
    assert errors == ["original image is missing from object storage"] * 3


def test_presigned_shards_start_with_one_head_each_and_fail_what_is_not_there(
    service_env: ServiceEnv, detector: Detector
) -> None:
    import tarfile

    from fakescope.client import _pack_shards

    seeds = list(range(9800, 9805))
    items = [InputItem(f"{s}.png", functools.partial(png_bytes, s)) for s in seeds]
    items.append(InputItem("gone.png", lambda: (_ for _ in ()).throw(OSError("vanished"))))
    folder = service_env.tmp / f"shards-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    files, specs = _pack_shards(items, folder)
    assert len(files) == 1 and [m["name"] for m in specs[0]] == [*(f"{s}.png" for s in seeds), "gone.png"]
    with tarfile.open(files[0]) as tar:  # a plain tar: members by position, bytes where the spec says
        assert tar.getnames() == [f"{i:07d}" for i in range(5)]
    shards = [[(m["name"], m["offset"], m["length"]) for m in spec] for spec in specs]
    counting = _CountingStore(service_env.store)
    with service_env.session() as session:
        job, urls, created = uploads.create_upload_job(
            session,
            counting,  # type: ignore[arg-type]
            JobRequest(_tenant(service_env)),
            shards=shards,
        )
        assert created and len(urls) == 1 and job.total == 6
        (key,) = {it.object_key for it, _ in urls}
        service_env.store.put(key, files[0].read_bytes())  # what the client's one PUT does
        counting.calls.clear()
        chunks = Chunks()
        uploads.start_job(session, counting, chunks, job=job)  # type: ignore[arg-type]
        assert counting.calls == {"size": 1}  # one HEAD for the shard, not one per image
        ((job_id, ids),) = chunks.sent
        classify_chunk(session, service_env.store, detector, job_id=job_id, item_ids=ids)
    with service_env.session() as session:  # a new one: the one above still holds the items the URLs came with
        rows = session.exec(select(JobItem).where(JobItem.job_id == job.id).order_by(col(JobItem.position))).all()
    assert [r.status for r in rows] == [ItemStatus.DONE] * 5 + [ItemStatus.FAILED], [r.error for r in rows]
    assert rows[-1].error == "image was not uploaded"
    assert [r.sha256 for r in rows[:5]] == [hashlib.sha256(png_bytes(s)).hexdigest() for s in seeds]


def test_the_cache_answers_from_the_latest_of_many_copies(service_env: ServiceEnv, detector: Detector) -> None:
    tenant = _tenant(service_env)
    # Three jobs of the same bytes: three finished copies (the later two answered from the cache).
    sha = next(iter(_classify(service_env, detector, _job(service_env, 1, tenant, seeds=[430])).values())).sha256
    assert sha is not None
    for _ in range(2):
        _classify(service_env, detector, _job(service_env, 1, tenant, seeds=[430]))
    with service_env.session() as session:
        copies = session.exec(select(JobItem).where(JobItem.sha256 == sha)).all()
        assert len(copies) == 3
        # Mark one as the newest, with its own probability: the cache must answer from it.
        newest, keys = copies[1].id, {c.object_key for c in copies}
        session.exec(
            update(JobItem)
            .where(col(JobItem.id) == newest)
            .values(finished_at=utcnow() + timedelta(minutes=5), fake_probability=0.123)
        )
        session.commit()
    loaded: list[object] = []

    def count(target: object, _context: object) -> None:
        loaded.append(target)

    event.listen(JobItem, "load", count)
    try:
        with service_env.session() as session:
            hits = cached_results(
                session, tenant_id=tenant, model_versions=detector.model_versions, sha256s=[sha, sha, "0" * 64]
            )
    finally:
        event.remove(JobItem, "load", count)
    assert list(hits) == [sha] and hits[sha].id == newest and hits[sha].fake_probability == 0.123
    # Only that copy was loaded: a hash sent thousands of times costs one row per chunk.
    assert len(loaded) == 1
    # Dedup of stored originals picks one location per hash, however many copies point at it.
    with service_env.session() as session:
        known = uploads._known_originals(session, tenant, {sha, None})
    assert list(known) == [sha] and known[sha][0] in keys


@pytest.mark.slow
def test_a_job_over_the_parameter_limit_starts_and_expires(service_env: ServiceEnv) -> None:
    """100,000 items (the most a job may hold): more than one Postgres statement can bind (65,535), at
    start and at retention."""
    n, per_shard = 100_000, 256
    shards = [
        [(f"{s}-{m}.png", m * 10, 10) for m in range(min(per_shard, n - s * per_shard))]
        for s in range(-(-n // per_shard))
    ]
    with service_env.session() as session:
        job, _, created = uploads.create_upload_job(
            session, service_env.store, JobRequest(_tenant(service_env)), shards=shards
        )
        assert created and job.total == n
        # Nothing was uploaded: every item fails at the start, in one transaction.
        chunks = Chunks()
        job = uploads.start_job(session, service_env.store, chunks, job=job)
        assert (job.state == JobState.FAILED and chunks.sent == [(job.id, [])]) or not chunks.sent
        assert svc.job_counts(session, job_id=job.id).failed == n
        job_id = job.id
        # Give every item an object of its own and let the job expire: retention looks for sharers of
        # 100,000 keys and deletes the rows.
        session.exec(
            update(JobItem)
            .where(col(JobItem.job_id) == job_id)
            .values(object_key=func.concat("t/", cast(JobItem.id, String)), object_offset=None, object_length=None)
        )
        session.exec(update(Job).where(col(Job.id) == job_id).values(finished_at=utcnow() - timedelta(days=40)))
        session.commit()
        jobs, objects = svc.purge_expired(session, service_env.store, older_than_s=30 * 86400)
        assert jobs >= 1 and objects >= n
        assert session.get(Job, job_id) is None


def test_overlays_are_drawn_a_few_at_a_time(
    service_env: ServiceEnv, detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from fakescope.service import overlays

    items = _classify(service_env, detector, _job(service_env, 8, _tenant(service_env), seeds=range(61_200, 61_208)))
    job_id = next(iter(items.values())).job_id
    now, most = 0, 0
    lock = threading.Lock()
    real = overlays.render_overlay

    def slow_render(*args: Any, **kwargs: Any) -> bytes:
        nonlocal now, most
        with lock:
            now += 1
            most = max(most, now)
        time.sleep(0.2)  # long enough for every request to be waiting at once
        with lock:
            now -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(overlays, "render_overlay", slow_render)

    def draw(position: int) -> bytes | None:
        with service_env.session() as session:
            return overlays.item_overlay(session, service_env.store, job_id=job_id, position=position)

    with ThreadPoolExecutor(8) as pool:
        pngs = list(pool.map(draw, range(8)))
    assert all(p is not None and p.startswith(b"\x89PNG") for p in pngs)
    assert most == overlays.DRAW_SLOTS


def test_a_chunk_classifies_only_its_own_jobs_items(service_env: ServiceEnv, detector: Detector) -> None:
    tenant = _tenant(service_env)
    mine, theirs = _job(service_env, 1, tenant, seeds=[61_300]), _job(service_env, 2, tenant, seeds=[61_301, 61_302])
    ((my_job, _),), ((_, their_items),) = mine.sent, theirs.sent
    with service_env.session() as session:
        # A message that names job A but item ids of job B: none of B's items is started or written.
        assert classify_chunk(session, service_env.store, detector, job_id=my_job, item_ids=their_items) == 0
        rows = session.exec(select(JobItem).where(col(JobItem.id).in_(their_items))).all()
    assert [(r.status, r.attempts) for r in rows] == [(ItemStatus.QUEUED, 0)] * 2
