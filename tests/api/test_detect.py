"""POST /v1/detect: one image answered in the request by the classify pool, or 503 within the deadline."""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from fakescope.cli import main
from fakescope.client import ApiError, FakescopeClient
from fakescope.db.models import ItemStatus, Job, JobItem
from fakescope.service.detect import wait_for_item
from tests.utils.stack import ServiceEnv, ServiceStack, png_bytes, private_stack

# What a job item's result and the check's answer must agree on for the same bytes.
SAME = ("prediction", "fake_probability", "domain_score", "model_version", "sha256", "width", "height", "decided_by")


def _job_item(stack: ServiceStack, data: bytes, tenant: str) -> dict[str, Any]:
    with stack.client(tenant) as c:
        r = c.post("/v1/jobs", files=[("files", ("same.png", data, "image/png"))])
        assert r.status_code == 202, r.text
        stack.wait_job(r.json()["id"], tenant=tenant)
        return c.get(f"/v1/jobs/{r.json()['id']}/results").json()["data"][0]


def test_detect_answers_what_a_job_item_answers(service_stack: ServiceStack) -> None:
    data = png_bytes(7101, size=48)
    with service_stack.client("a") as c:
        r = c.post("/v1/detect", files={"file": ("one.png", data, "image/png")})
    assert r.status_code == 200, r.text
    got = r.json()
    # Tenant b has no cache entry for these bytes: its job item is classified afresh by the pool.
    item = _job_item(service_stack, data, "b")
    assert item["cached"] is False
    assert {k: got[k] for k in SAME} == {k: item[k] for k in SAME}
    assert got["prediction"] in ("real", "fake") and got["overlay_url"] and got["image_url"]
    # The same bytes again: the tenant's result cache answers, with the same result.
    with service_stack.client("a") as c:
        again = c.post("/v1/detect", files={"file": ("one.png", data, "image/png")}).json()
    assert again["cached"] is True and {k: again[k] for k in SAME} == {k: got[k] for k in SAME}


def test_detect_refuses_a_bad_image_and_an_archive(service_stack: ServiceStack) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", png_bytes(1))
        zf.writestr("b.png", png_bytes(2))
    with service_stack.client() as c:
        bad = c.post("/v1/detect", files={"file": ("x.png", b"\x89PNG\r\n\x1a\n not really", "image/png")})
        archive = c.post("/v1/detect", files={"file": ("two.zip", buf.getvalue(), "application/zip")})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("not an image in a supported format"), bad.text
    assert archive.status_code == 422
    assert archive.json()["detail"] == "Send exactly one image (an archive is not one image)"


def test_detect_answers_503_within_its_deadline_when_no_pool_runs(service_env: ServiceEnv) -> None:
    with (
        private_stack(service_env, "detect-busy", settings={"FAKESCOPE_DETECT_TIMEOUT_S": "2"}) as st,
        st.client() as c,
    ):
        t0 = time.monotonic()
        r = c.post("/v1/detect", files={"file": ("one.png", png_bytes(7102), "image/png")})
        elapsed = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.json()["detail"] == "The classify pool did not answer in time; retry later"
    assert r.headers["Retry-After"] == "2"
    assert elapsed < 2 + 10, elapsed  # the deadline plus the upload, never an open-ended wait
    # The dropped check is cancelled, so a pool that comes back skips it.
    with service_env.session() as session:
        job = session.exec(select(Job).order_by(col(Job.created_at).desc())).first()
        assert job is not None and job.state == "cancelled"
        items = session.exec(select(JobItem).where(JobItem.job_id == job.id)).all()
        assert [it.status for it in items] == [ItemStatus.CANCELLED]


def test_wait_for_item_stops_at_the_deadline_on_its_clock(service_env: ServiceEnv) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    url = service_env.settings.sqlalchemy_url
    assert wait_for_item(url, job_id=uuid.uuid4(), timeout_s=1.0, clock=lambda: now[0], sleep=sleep) is None
    assert now[0] == 1.0 and slept[:3] == [0.01, 0.02, 0.05] and max(slept) == 0.1


def test_client_and_cli_detect(
    service_stack: ServiceStack, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "one.png"
    image.write_bytes(png_bytes(7103))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with FakescopeClient(service_stack.api_url, service_stack.keys["a"]) as client:
        got = client.detect(image, overlays=False)
        assert got["prediction"] in ("real", "fake") and got["overlay_url"] is None
        with pytest.raises(ApiError) as err:
            client.detect(tmp_path / "bad.png")
        assert err.value.status == 422
    monkeypatch.setenv("FAKESCOPE_API_KEY", service_stack.keys["a"])
    capsys.readouterr()
    assert main(["detect", str(image), "--api", service_stack.api_url]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == got["sha256"]
    assert main(["detect", str(tmp_path / "bad.png"), "--api", service_stack.api_url]) == 2
    assert "HTTP 422" in capsys.readouterr().err
