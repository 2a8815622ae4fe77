"""Worker faults over real processes: each item ends with one result or one recorded error, never twice.

Each test runs its own API and workers on a private Redis (see ``private_stack``), so its short time
limits and visibility timeouts touch nobody else's messages.
"""

from __future__ import annotations

import importlib.util
import io
import re
import signal
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func
from sqlmodel import col, select

from fakescope.db.models import ExplainStatus, ItemStatus, JobItem
from fakescope.detector import Detector
from tests.core.test_provenance import OVERRUNNING_SUB_BLOCKS, TRAINED, _png, _slow_gif, _with_cabx, _xmp
from tests.utils.images import gradient_png
from tests.utils.stack import HoldPoint, PrivateStack, ServiceEnv, free_port, png_bytes, private_stack, wait_until

pytestmark = pytest.mark.slow

TASK_LINE = re.compile(r"Task fakescope\.(?:classify|explain)\[([0-9a-f-]+)\] (received|succeeded|retry|raised)")
SUCCEEDED = re.compile(r"Task fakescope\.explain\[[0-9a-f-]+\] succeeded in [0-9.]+s: (\d+)")


def _fakes(checkpoint: Path, n: int) -> list[int]:
    """Seeds of noise images the tiny random detector calls fake (about one in twenty-five)."""
    detector = Detector.load(checkpoint, device="cpu")
    seeds = list(range(30000, 31500))
    batch = np.stack([np.asarray(Image.open(io.BytesIO(png_bytes(s))).convert("RGB")) for s in seeds])
    fakes = [s for s, p in zip(seeds, detector.predict(batch), strict=True) if p >= 0.5][:n]
    assert len(fakes) == n, f"only {len(fakes)} fakes among {len(seeds)} seeds"
    return fakes


def _submit(st: PrivateStack, files: list[tuple[str, bytes]], **data: str) -> str:
    with st.client() as c:
        r = c.post("/v1/jobs", files=[("files", (n, b, "image/png")) for n, b in files], data=data)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _counts(st: PrivateStack, job_id: str) -> dict[str, int]:
    with st.client() as c:
        return c.get(f"/v1/jobs/{job_id}").json()["counts"]


def _items(svc: ServiceEnv, job_id: str) -> list[JobItem]:
    with svc.session() as session:
        return list(session.exec(select(JobItem).where(col(JobItem.job_id) == job_id).order_by(col(JobItem.position))))


def _one_row_per_position(svc: ServiceEnv, job_id: str, n: int) -> None:
    with svc.session() as session:
        rows = session.exec(
            select(JobItem.position, func.count()).where(JobItem.job_id == job_id).group_by(col(JobItem.position))
        ).all()
    assert sorted(rows) == [(p, 1) for p in range(n)]


def _task_states(log: str) -> dict[str, list[str]]:
    states: dict[str, list[str]] = {}
    for task_id, state in TASK_LINE.findall(log):
        states.setdefault(task_id, []).append(state)
    return states


def test_explain_worker_sigkilled_mid_task_loses_and_repeats_nothing(
    service_env: ServiceEnv, tiny_checkpoint: Path
) -> None:
    # Each image four times: classified once, answered from the cache after that, explained every time.
    fakes = _fakes(tiny_checkpoint, 24) * 4
    n = len(fakes)
    hold = HoldPoint(service_env.tmp / f"hold-{uuid.uuid4().hex[:8]}")
    # The killed worker's message comes back after the visibility timeout, which must exceed the time limit.
    tight = {
        "FAKESCOPE_TASK_TIME_LIMIT_S": "10",
        "FAKESCOPE_VISIBILITY_TIMEOUT_S": "12",
        "FAKESCOPE_EXPLAIN_CHUNK_SIZE": "1",
    }
    with private_stack(service_env, "explain-kill", settings=tight) as st:
        st.start_worker("classify", "classify-1")
        job_id = _submit(st, [(f"{i}.png", png_bytes(s)) for i, s in enumerate(fakes)], explain="true")
        # Everything classified before an explain worker exists: all the explain messages wait in the queue.
        wait_until(lambda: _counts(st, job_id)["done"] == n, 120, "classification")
        assert _counts(st, job_id)["explain_pending"] == n
        st.start_worker("explain", "explain-1", wait=False, settings=hold.env)
        # Four tasks are let through and answered; the worker then stops in the fifth, its item read and
        # nothing of it written: the kill lands mid-task every time.
        in_flight, held = hold.hold_after(4, job_id)
        assert held["job_id"] == job_id
        assert _counts(st, job_id)["explain_pending"] == n - 4
        # SIGKILL of the whole group: no ack, no requeue; the message sits unacknowledged in Redis.
        st.stop("explain-1", sig=signal.SIGKILL)
        # What the kill left: the task in hand, delivered and never acknowledged.
        assert job_id in st.unacked_jobs(), "the killed worker's task is not waiting for redelivery"

        st.start_worker("explain", "explain-2")
        job = st.wait_job(job_id, timeout=120)
        assert job["state"] == "succeeded", job
        assert job["counts"]["explain_pending"] == 0
        # The held item is explained only by the redelivered message, once its visibility timeout has passed.
        try:
            wait_until(lambda: "succeeded" in _task_states(st.log("explain-2")).get(in_flight, []), 60, "redelivery")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{st.logs()}") from None
        # Each task returns how many explanations it wrote: together exactly one per image, the killed
        # task's one written by its redelivered copy.
        again = re.search(rf"Task fakescope\.explain\[{in_flight}\] succeeded in [0-9.]+s: (\d+)", st.log("explain-2"))
        assert again is not None and again.group(1) == "1", st.log("explain-2")[-3000:]
        written = sum(int(w) for name in ("explain-1", "explain-2") for w in SUCCEEDED.findall(st.log(name)))
        assert written == n

    items = _items(service_env, job_id)
    assert [i.status for i in items] == [ItemStatus.DONE] * n
    assert all(i.explain_status == ExplainStatus.DONE and i.explanation for i in items), items
    assert all(i.artifacts == list(i.explanation or {}) for i in items)
    _one_row_per_position(service_env, job_id, n)


def test_classify_past_its_time_limit_fails_its_items_and_the_job_finishes(service_env: ServiceEnv) -> None:
    hold = HoldPoint(service_env.tmp / f"hold-{uuid.uuid4().hex[:8]}")
    with private_stack(service_env, "time-limit", settings={"FAKESCOPE_CHUNK_SIZE": "8"}) as st:
        # The first chunk is kept at the hold point and never released: it runs past its limit every
        # time, however fast this machine classifies. The limit (10 s hard, so 9 s soft) covers what a
        # task does before the hold point, loading the model in the first one, on a busy machine too.
        st.start_worker(
            "classify",
            "classify-1",
            settings={"FAKESCOPE_TASK_TIME_LIMIT_S": "10", "FAKESCOPE_VISIBILITY_TIMEOUT_S": "15", **hold.env},
        )
        job_id = _submit(st, [(f"{i}.png", png_bytes(94_000 + i)) for i in range(16)])
        _, cut_off = hold.next_held()
        # The second chunk reaches the same worker only once the first was cut off: it is still healthy.
        second, _ = hold.next_held()
        hold.release(second)
        job = st.wait_job(job_id, timeout=120)
        assert job["state"] == "partially_succeeded", job
        assert job["counts"]["total"] == 16
        assert (job["counts"]["done"], job["counts"]["failed"], job["counts"]["queued"]) == (8, 8, 0)

    items = _items(service_env, job_id)
    failed = [i for i in items if str(i.id) in cut_off["item_ids"]]
    assert len(failed) == 8
    assert {i.status for i in failed} == {ItemStatus.FAILED}
    assert {i.error for i in failed} == {"classification exceeded the time limit of 10s"}
    assert all(i.prediction is None and i.overlay_key is None for i in failed)
    assert [i.status for i in items if str(i.id) not in cut_off["item_ids"]] == [ItemStatus.DONE] * 8
    _one_row_per_position(service_env, job_id, 16)


def test_slow_images_fail_alone_and_the_rest_of_their_chunk_is_answered(service_env: ServiceEnv) -> None:
    # One chunk: eight 36-megapixel images (each over a second to decode and shrink here) among eight
    # small ones. With a per-image limit of 0.1 s each is stopped after the block of compressed data it
    # is decoding and fails alone, with its own reason, and the chunk goes on to answer the rest. The
    # chunk's own limit is the session's (90 s): what this test checks takes no race against it.
    with private_stack(service_env, "image-limit", settings={"FAKESCOPE_CHUNK_SIZE": "16"}) as st:
        st.start_worker("classify", "classify-1", settings={"FAKESCOPE_IMAGE_TIME_LIMIT_S": "0.1"})
        small, big = iter(range(71_000, 71_008)), {1, 3, 5, 7, 9, 11, 13, 15}
        files = [
            (f"big-{i}.png", gradient_png(200 + i)) if i in big else (f"small-{i}.png", png_bytes(next(small)))
            for i in range(16)
        ]
        job_id = _submit(st, files)
        job = st.wait_job(job_id, timeout=120)
        assert job["state"] == "partially_succeeded", job
        assert (job["counts"]["done"], job["counts"]["failed"], job["counts"]["queued"]) == (8, 8, 0)
        # The chunk ran once and wrote all sixteen rows, the eight failures among them.
        written = re.findall(
            r"Task fakescope\.classify\[[0-9a-f-]+\] succeeded in [0-9.]+s: (\d+)", st.log("classify-1")
        )
        assert written == ["16"], st.logs()

    items = _items(service_env, job_id)
    for item in items:
        if item.name.startswith("big-"):
            assert item.status == ItemStatus.FAILED, item
            assert item.error == "decoding the image took longer than the per-image time limit of 0.1 s"
        else:
            assert item.status == ItemStatus.DONE and item.prediction in ("real", "fake"), item
    _one_row_per_position(service_env, job_id, 16)


def _group(pgid: int) -> dict[int, str]:
    """pid -> command line of every process in process group ``pgid``."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid:  # after the name: state, ppid, pgrp
            out[int(d.name)] = cmdline
    return out


def _declared_slow_gif(sub_blocks: int) -> bytes:
    """:func:`_slow_gif` with an XMP packet declaring generation, so its result keeps its provenance."""
    gif = _slow_gif(sub_blocks)
    packet = _xmp(source_type=TRAINED).encode()
    # XMP's GIF application extension: the packet raw, then the "magic trailer" that ends any sub-block chain.
    ext = b"\x21\xff\x0bXMP DataXMP" + packet + b"\x01" + bytes(range(255, -1, -1)) + b"\x00"
    at = 13 + 3 * 2 ** ((gif[10] & 7) + 1) if gif[10] & 0x80 else 13  # after the global colour table
    return gif[:at] + ext + gif[at:]


@pytest.mark.skipif(importlib.util.find_spec("c2pa") is None, reason="c2pa-python is not installed")
def test_a_c2pa_read_that_overruns_is_killed_in_the_worker_and_the_image_answered(service_env: ServiceEnv) -> None:
    stopped = "c2pa read did not finish in 2 s; the reader was stopped"
    with private_stack(service_env, "c2pa-kill") as st:
        # Decoded in line, in order: on decode threads the GIF's read could come first, and the PNG's
        # would then start a new helper that is rightly left idle after the job.
        st.start_worker("classify", "classify-1", settings={"FAKESCOPE_DECODE_THREADS": "0"})
        # One chunk: a PNG with a C2PA box starts the worker's c2pa helper (and is read by it), then a
        # GIF that c2pa-rs would walk for tens of seconds overruns its 2 s read.
        files = [
            ("boxed.png", _with_cabx(_png({"Comment": "71_010"}))),
            ("slow.gif", _declared_slow_gif(OVERRUNNING_SUB_BLOCKS)),
        ]
        with st.client() as c:
            r = c.post("/v1/jobs", files=[("files", (n, b, "application/octet-stream")) for n, b in files])
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
        job = st.wait_job(job_id, timeout=120)
        assert job["state"] == "succeeded", job
        # Nothing of the stopped read runs on: it ran in a helper process (an abandoned native read in the
        # worker itself once kept a core busy after its job), and no helper is left in the worker's group.
        group = _group(st.pid("classify-1"))
        assert not [cmd for cmd in group.values() if "fakescope.c2pa_process" in cmd], group

    boxed, slow = _items(service_env, job_id)
    assert boxed.status == slow.status == ItemStatus.DONE and slow.prediction == "fake", (boxed, slow)
    assert boxed.provenance is not None and boxed.provenance["c2pa"]["present"], boxed.provenance
    assert boxed.provenance["c2pa"]["reason"] != stopped  # read whole by the helper
    # The GIF is answered: generated by its XMP, and its C2PA reading says it was stopped.
    assert slow.decided_by == "provenance" and slow.provenance is not None
    assert slow.provenance["c2pa"]["reason"] == stopped, slow.provenance


def test_explain_past_its_time_limit_fails_its_explanations_and_the_job_finishes(
    service_env: ServiceEnv, tiny_checkpoint: Path
) -> None:
    fakes = _fakes(tiny_checkpoint, 24)
    n = len(fakes)
    hold = HoldPoint(service_env.tmp / f"hold-{uuid.uuid4().hex[:8]}")
    # One classify chunk, so one explain task for all of them.
    sizes = {"FAKESCOPE_CHUNK_SIZE": str(n), "FAKESCOPE_EXPLAIN_CHUNK_SIZE": str(n)}
    with private_stack(service_env, "explain-limit", settings=sizes) as st:
        st.start_worker("classify", "classify-1")
        # The task is kept at the hold point and never released: it runs past its limit every time,
        # however fast this machine explains. The limit (10 s hard, so 9 s soft) covers what the task
        # does before the hold point, loading the models, on a busy machine too.
        st.start_worker(
            "explain",
            "explain-1",
            settings={"FAKESCOPE_TASK_TIME_LIMIT_S": "10", "FAKESCOPE_VISIBILITY_TIMEOUT_S": "15", **hold.env},
        )
        job_id = _submit(st, [(f"{i}.png", png_bytes(s)) for i, s in enumerate(fakes)], explain="true")
        _, held = hold.next_held()
        assert held["job_id"] == job_id and len(held["item_ids"]) == n
        job = st.wait_job(job_id, timeout=180)
        # Classification is what the job's state reports; the explanations each carry their own error.
        assert job["state"] == "succeeded", job
        assert (job["counts"]["done"], job["counts"]["explain_pending"]) == (n, 0)

    items = _items(service_env, job_id)
    assert {i.explain_status for i in items} == {ExplainStatus.FAILED}
    assert {i.explain_error for i in items} == {"explanation exceeded the time limit of 10s"}
    assert all(i.explanation is None and i.status == ItemStatus.DONE for i in items)
    _one_row_per_position(service_env, job_id, n)


def test_transient_errors_are_retried_with_backoff_then_fail_the_items(service_env: ServiceEnv) -> None:
    with private_stack(service_env, "retries", settings={"FAKESCOPE_CHUNK_SIZE": "2"}) as st:
        # The object store is unreachable from this worker only: the API stored the originals.
        dead_s3 = {
            "FAKESCOPE_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "FAKESCOPE_TASK_MAX_RETRIES": "2",
            "FAKESCOPE_TASK_RETRY_BACKOFF_S": "0.5",
        }
        st.start_worker("classify", "classify-nos3", settings=dead_s3)
        job_id = _submit(st, [(f"{i}.png", png_bytes(31700 + i)) for i in range(2)])
        job = st.wait_job(job_id, timeout=120)
        assert job["state"] == "failed", job
        log = st.log("classify-nos3")
        # Two retries, the second waiting twice as long as the first; then the items are failed.
        assert re.findall(r"retry: Retry in ([0-9.]+)s", log) == ["0.5", "1.0"], log[-3000:]
        st.stop("classify-nos3")
        items = _items(service_env, job_id)
        assert [i.status for i in items] == [ItemStatus.FAILED] * 2
        for i in items:
            assert i.error and i.error.startswith("classification failed after 2 retries: cannot read jobs/"), i.error

        # Not transient (no checkpoint where the settings say): no retry, the reason names the exception.
        missing = service_env.tmp / "no-such-checkpoint"
        st.start_worker("classify", "classify-nockpt", settings={"FAKESCOPE_CHECKPOINT": str(missing)})
        job_id = _submit(st, [(f"{i}.png", png_bytes(31710 + i)) for i in range(2)])
        job = st.wait_job(job_id, timeout=120)
        assert job["state"] == "failed", job
        assert "retry: Retry in" not in st.log("classify-nockpt")

    items = _items(service_env, job_id)
    errors: set[Any] = {i.error for i in items}
    assert len(errors) == 1, errors
    error = errors.pop()
    assert error.startswith("classification failed: ") and str(missing) in error, error
    assert [i.status for i in items] == [ItemStatus.FAILED] * 2
    _one_row_per_position(service_env, job_id, 2)
