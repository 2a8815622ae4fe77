"""Feedback through the real API, database and object store, exported and fed to calibrate."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from fakescope.cli import main
from fakescope.client import FakescopeClient
from fakescope.evaluate import operating_points
from tests.utils.stack import ServiceStack, png_bytes


def _job(stack: ServiceStack, files: list[tuple[str, bytes]]) -> str:
    with stack.client() as c:
        r = c.post("/v1/jobs", files=[("files", (n, b, "image/png")) for n, b in files])
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
    stack.wait_job(job_id)
    return job_id


def test_feedback_is_idempotent_listed_counted_and_exported(
    service_stack: ServiceStack, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [(f"{i}.png", png_bytes(8200 + i)) for i in range(6)] + [("broken.png", b"not an image")]
    job_id = _job(service_stack, files)
    with service_stack.client() as c:
        verdicts = {r["position"]: r["prediction"] for r in c.get(f"/v1/jobs/{job_id}/results").json()["data"]}
        url = f"/v1/jobs/{job_id}/items/0/feedback"
        first = c.post(url, json={"label": "fake", "note": "made with a generator, says the uploader"})
        assert first.status_code == 201, first.text
        body = first.json()
        assert body["verdict"] == verdicts[0] and body["disputed"] == (verdicts[0] != "fake")
        assert body["name"] == "0.png" and body["model_version"]
        # The same label again changes nothing; another one replaces it.
        again = c.post(url, json={"label": "fake", "note": "made with a generator, says the uploader"})
        assert again.status_code == 200 and again.json()["id"] == body["id"]
        assert again.json()["updated_at"] == body["updated_at"]
        changed = c.post(url, json={"label": "real"})
        assert changed.status_code == 200 and changed.json()["label"] == "real" and changed.json()["note"] is None
        # Items without a verdict, unknown items, other tenants' jobs, bad labels.
        assert c.post(f"/v1/jobs/{job_id}/items/6/feedback", json={"label": "real"}).json() == {
            "detail": "Item has no verdict to give feedback on"
        }
        assert c.post(f"/v1/jobs/{job_id}/items/99/feedback", json={"label": "real"}).status_code == 404
        assert c.post(url, json={"label": "maybe"}).status_code == 422
        for position in range(1, 6):
            label = "fake" if position % 2 else "real"
            assert c.post(f"/v1/jobs/{job_id}/items/{position}/feedback", json={"label": label}).status_code == 201
        page = c.get("/v1/feedback", params={"limit": 4}).json()
        assert page["count"] == 6 and len(page["data"]) == 4 and page["data"][0]["position"] == 0
        metrics = httpx.get(f"{service_stack.api_url}/metrics", timeout=30).text
        assert 'fakescope_feedback_total{label="real"' in metrics
    with service_stack.client("b") as other:
        assert other.post(url, json={"label": "fake"}).status_code == 404
        assert other.get("/v1/feedback").json()["count"] == 0

    out = tmp_path / "export"
    with FakescopeClient(service_stack.api_url, service_stack.keys["a"]) as client:
        counts = client.export_feedback(out)
    assert counts == {"real": 3, "fake": 3, "skipped": 0}
    exported = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert exported[0].startswith("FAKE/") and f"REAL/{job_id[:8]}-0-0.png" in exported
    assert (out / "REAL" / f"{job_id[:8]}-0-0.png").read_bytes() == files[0][1]

    # The export is a labelled folder calibrate takes as it is.
    points = operating_points(tiny_checkpoint, [out], target_fpr=0.34)
    assert (points["n_real"], points["n_fake"], points["errors"]) == (3, 3, 0)
    assert points["at_these_thresholds"]["false_positive_rate"] <= 0.34
    assert points["real_threshold"] <= points["fake_threshold"]
    capsys.readouterr()
    args = ["calibrate", "--checkpoint", str(tiny_checkpoint), "--data", str(out), "--target-fpr", "0"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["at_these_thresholds"]["false_positive_rate"] == 0.0
