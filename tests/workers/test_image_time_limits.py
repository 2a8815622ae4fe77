"""Per-image time limits in the explain pool, through real API, broker, Postgres, S3 and worker processes:
one image that costs long to decode fails its own explanation alone, the rest of its chunk is explained.
(The classify pool's counterpart is in ``test_faults.py``; ``fakescope scan``'s in ``tests/core``.)"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from sqlmodel import col, select

from fakescope.db.models import ExplainStatus, ItemStatus, JobItem
from fakescope.pipeline import IMAGE_TIME_LIMIT_ERROR
from tests.core.test_provenance import TRAINED, _xmp
from tests.utils.stack import ServiceEnv, png_bytes, private_stack

pytestmark = pytest.mark.slow


def declared_generated(image: Image.Image) -> bytes:
    """``image`` as a PNG whose XMP says it was generated: fake by its own provenance, whatever the
    tiny random detector thinks, so it reaches the explain pool."""
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _xmp(source_type=TRAINED))
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def big_gradient(side: int = 6000) -> Image.Image:
    """36 megapixels, smooth: about 120 KB as a PNG, over a second to decode and shrink here."""
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    arr = np.empty((side, side, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = ramp[None, :], ramp[:, None], 91
    return Image.fromarray(arr)


def test_a_slow_image_fails_its_explanation_alone_and_its_chunk_is_explained(service_env: ServiceEnv) -> None:
    # One classify chunk and one explain chunk of four fakes: three small, one of 36 megapixels. The
    # classify worker takes its time over it (a limit of 60 s); the explain worker, which decodes each
    # original again, stops it at 0.1 s, and only its explanation fails: its verdict stands.
    small = [declared_generated(Image.open(io.BytesIO(png_bytes(91_100 + i)))) for i in range(3)]
    files = [
        ("s0.png", small[0]),
        ("big.png", declared_generated(big_gradient())),
        *[(f"s{i}.png", small[i]) for i in (1, 2)],
    ]
    sizes = {"FAKESCOPE_CHUNK_SIZE": "8", "FAKESCOPE_EXPLAIN_CHUNK_SIZE": "8"}
    with private_stack(service_env, "explain-image-limit", **sizes) as st:
        st.start_worker("classify", "classify-1", FAKESCOPE_IMAGE_TIME_LIMIT_S="60")
        st.start_worker("explain", "explain-1", FAKESCOPE_IMAGE_TIME_LIMIT_S="0.1")
        with st.client() as c:
            r = c.post("/v1/jobs", files=[("files", (n, b, "image/png")) for n, b in files], data={"explain": "true"})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
        job = st.wait_job(job_id, timeout=180)
        assert job["state"] == "succeeded", job
        assert (job["counts"]["fake"], job["counts"]["explain_pending"]) == (4, 0), job
        # One explain task answered all four.
        assert st.log("explain-1").count("succeeded in") == 1, st.log("explain-1")[-3000:]

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
