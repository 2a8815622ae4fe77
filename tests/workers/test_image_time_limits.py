"""Images that cost long to decode, through real API, broker, Postgres, S3 and worker processes: the
crafted files of the untrusted-input issue cost a chunk little, and in the explain pool one image that
costs long to decode fails its own explanation alone while the rest of its chunk is explained. (The
classify pool's per-image limit is in ``test_faults.py``; ``fakescope scan``'s in ``tests/core``.)"""

from __future__ import annotations

import io
import re
import struct
import zlib

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from sqlmodel import col, select

from fakescope.db.models import ExplainStatus, ItemStatus, JobItem
from fakescope.pipeline import IMAGE_TIME_LIMIT_ERROR
from tests.core.test_provenance import TRAINED, _xmp
from tests.utils.images import gradient
from tests.utils.stack import ServiceEnv, png_bytes, private_stack, wait_until

pytestmark = pytest.mark.slow


def declared_generated(image: Image.Image) -> bytes:
    """``image`` as a PNG whose XMP says it was generated: fake by its own provenance, whatever the
    tiny random detector thinks, so it reaches the explain pool."""
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _xmp(source_type=TRAINED))
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_a_slow_image_fails_its_explanation_alone_and_its_chunk_is_explained(service_env: ServiceEnv) -> None:
    # One classify chunk and one explain chunk of four fakes: three small, one of 36 megapixels. The
    # classify worker takes its time over it (a limit of 60 s); the explain worker, which decodes each
    # original again, stops it at 0.1 s, and only its explanation fails: its verdict stands.
    small = [declared_generated(Image.open(io.BytesIO(png_bytes(91_100 + i)))) for i in range(3)]
    files = [
        ("s0.png", small[0]),
        ("big.png", declared_generated(gradient(91))),
        *[(f"s{i}.png", small[i]) for i in (1, 2)],
    ]
    with private_stack(
        service_env, "explain-image-limit", settings={"FAKESCOPE_CHUNK_SIZE": "8", "FAKESCOPE_EXPLAIN_CHUNK_SIZE": "8"}
    ) as st:
        st.start_worker("classify", "classify-1", settings={"FAKESCOPE_IMAGE_TIME_LIMIT_S": "60"})
        st.start_worker("explain", "explain-1", settings={"FAKESCOPE_IMAGE_TIME_LIMIT_S": "0.1"})
        with st.client() as c:
            r = c.post("/v1/jobs", files=[("files", (n, b, "image/png")) for n, b in files], data={"explain": "true"})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
        job = st.wait_job(job_id, timeout=180)
        assert job["state"] == "succeeded", job
        assert (job["counts"]["fake"], job["counts"]["explain_pending"]) == (4, 0), job
        # One explain task answered all four.
        # Celery logs a task's success after the task has committed the job's end: wait for the line.
        log = wait_until(lambda: "succeeded in" in st.log("explain-1") and st.log("explain-1"), 30, "explain log")
        assert log.count("succeeded in") == 1, log[-3000:]

    with service_env.session() as session:
        items = list(session.exec(select(JobItem).where(col(JobItem.job_id) == job_id).order_by(col(JobItem.position))))
    assert [i.status for i in items] == [ItemStatus.DONE] * 4
    assert all(i.prediction == "fake" and i.decided_by == "provenance" for i in items), items
    big = items[1]
    assert big.explain_status == ExplainStatus.FAILED and big.explanation is None
    assert big.explain_error == f"{IMAGE_TIME_LIMIT_ERROR} of 0.1 s"
    for i in (items[0], items[2], items[3]):
        assert i.explain_status == ExplainStatus.DONE and i.explain_error is None, i
        assert i.explanation is not None and i.artifacts == list(i.explanation)


def _text_bombs(chunks: int) -> bytes:
    """A PNG carrying ``chunks`` zTXt chunks, each a 2 MiB zlib bomb whose checksum fails at its end."""
    z = zlib.compress(b"\x00" * (2 * 1024 * 1024), 9)
    body = b"Comment\x00\x00" + z[:-4] + bytes(4)
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    plain = png_bytes(91_400)
    return plain[:33] + chunk * chunks + plain[33:]  # after IHDR


def _empty_segments(n: int) -> bytes:
    """A JPEG with ``n`` empty segments (fill markers) before its scan."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(91_401))).convert("RGB").save(buf, "JPEG")
    real = buf.getvalue()
    return real[:2] + b"\xff\x01" * n + real[2:]


def test_item3_crafted_images_cost_their_chunk_little(service_env: ServiceEnv) -> None:
    # The probes: a 16 MiB PNG of text chunks with bad checksums cost 42 s in provenance parsing and 40 s
    # in Pillow (through the service a 4 MiB one took 19-21 s); a 48 MiB JPEG of empty segments about
    # 20 s plus 27 s; one time limit covered a 128-image chunk, so one such image failed the other 127.
    # Now the parsers stop early and each fails (or is answered) alone, the chunk in a few seconds.
    crafted = {
        "bombs-2000.png": _text_bombs(2000),  # about 4 MiB
        "bombs-64.png": _text_bombs(64),  # at the compressed-chunk cap: parsed, within the text budget
        "segments.jpg": _empty_segments(24 * 1024 * 1024),  # 48 MiB
    }
    small = {f"small-{i}.png": png_bytes(91_410 + i) for i in range(5)}
    with private_stack(service_env, "crafted-images", settings={"FAKESCOPE_CHUNK_SIZE": "16"}) as st:
        st.start_worker("classify", "classify-1")
        with st.client() as c:
            files = [("files", (n, b, "application/octet-stream")) for n, b in {**crafted, **small}.items()]
            r = c.post("/v1/jobs", files=files)
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
        job = st.wait_job(job_id, timeout=180)
        log = wait_until(lambda: "succeeded in" in st.log("classify-1") and st.log("classify-1"), 30, "classify log")
        took = [float(t) for t in re.findall(r"Task fakescope\.classify\[[0-9a-f-]+\] succeeded in ([0-9.]+)s", log)]
    assert job["counts"]["total"] == 8 and job["counts"]["queued"] == 0, job
    assert len(took) == 1, took
    print(f"a chunk of three crafted images and five small ones took {took[0]:.2f} s")
    # Each crafted file alone cost tens of seconds; the whole chunk now costs a few, well inside one
    # image's time limit (10 s), so the parsers' own bounds stopped them, not the limit.
    assert took[0] < 8, took
    with service_env.session() as session:
        items = {i.name: i for i in session.exec(select(JobItem).where(col(JobItem.job_id) == job_id))}
    assert items["bombs-2000.png"].error == "PNG carries more than 64 compressed text chunks, the limit"
    assert items["segments.jpg"].error == "JPEG has more than 4096 markers before its image data, the limit"
    for name in small:
        assert items[name].status == ItemStatus.DONE and items[name].prediction in ("real", "fake"), items[name]
