"""Explain pool: images classified fake get artifacts and reasons; task2.json lists them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakescope.detector import Detector
from tests.utils.stack import ServiceStack, png_bytes

pytestmark = pytest.mark.slow


def _pick(checkpoint: Path, fakes: int, reals: int) -> tuple[list[int], list[int]]:
    """Seeds of noise images that the tiny random detector calls fake, and some it calls real."""
    detector = Detector.load(checkpoint, device="cpu")
    seeds = list(range(9000, 9400))
    batch = np.stack([np.asarray(Image.open(io.BytesIO(png_bytes(s))).convert("RGB")) for s in seeds])
    probs = detector.predict(batch)
    fake = [s for s, p in zip(seeds, probs, strict=True) if p >= 0.5][:fakes]
    real = [s for s, p in zip(seeds, probs, strict=True) if p < 0.5][:reals]
    assert len(fake) == fakes and len(real) == reals, "the tiny checkpoint gave too few fakes to test with"
    return fake, real


def test_explain_queue_explains_the_fakes(service_stack: ServiceStack, tiny_checkpoint: Path) -> None:
    pytest.importorskip("fakescope.explain", reason="explainers not merged yet (lead: run this once they are)")
    fake, real = _pick(tiny_checkpoint, 3, 2)
    names = {s: f"{k}.png" for k, s in enumerate(fake + real, start=1)}
    files = [("files", (names[s], png_bytes(s), "image/png")) for s in fake + real]
    with service_stack.client() as c:
        r = c.post("/v1/jobs", files=files, data={"explain": "true"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        job = service_stack.wait_job(job_id, timeout=300)
        assert job["state"] == "succeeded", job
        results = {x["name"]: x for x in c.get(f"/v1/jobs/{job_id}/results").json()["data"]}
        task2 = c.get(f"/v1/jobs/{job_id}/task2.json").json()
    for s in fake:
        item = results[names[s]]
        assert item["prediction"] == "fake"
        assert item["explain_status"] == "done", item
        assert item["explanation"] and all(isinstance(v, str) and v for v in item["explanation"].values())
        assert item["artifacts"] == list(item["explanation"])
        # The reasons as data too: the same artifacts, each with its signal, value and ratio (>= 2).
        assert [e["artifact"] for e in item["evidence"]] == item["artifacts"]
        assert all(e["ratio"] >= 3.0 and e["reason"] == item["explanation"][e["artifact"]] for e in item["evidence"])
    for s in real:
        assert results[names[s]]["explain_status"] == "none"
        assert results[names[s]]["explanation"] is None
    assert [t["index"] for t in task2] == [1, 2, 3]
    assert [t["explanation"] for t in task2] == [results[names[s]]["explanation"] for s in fake]
