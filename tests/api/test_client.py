"""The Python client and the submit/status/results/cancel commands against the real stack.

`fakescope submit DIR --wait --out A` (presigned uploads straight to the S3 server, progress bars) and
`fakescope scan DIR --out B` on the same folder and checkpoint must write the same files.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from fakescope.client import FakescopeClient
from fakescope.scan import run_scan
from fakescope.service.tenants import make_report_token
from tests.utils.stack import ServiceStack, png_bytes

N = 1000


def _cli(st: ServiceStack, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKESCOPE_")}
    env["FAKESCOPE_API_KEY"] = key or st.keys["a"]
    env["FAKESCOPE_CLIENT_CONFIG"] = "/nonexistent/client.json"
    return subprocess.run(
        [sys.executable, "-m", "fakescope.cli", *args, "--api", st.api_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_submit_wait_results_match_scan(service_stack: ServiceStack, tiny_checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(N - 10):
        (src / f"{i}.png").write_bytes(png_bytes(30_000 + i))
    for i in range(10):
        (src / "sub" / f"s{i}.png").write_bytes(png_bytes(31_000 + i))
    (src / "notes.png").write_bytes(b"not an image at all")  # fails alone, like in a scan
    sd = Image.open(io.BytesIO(png_bytes(31_500)))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat, Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd-v1-5")
    sd.save(src / "sd.png", pnginfo=info)  # declares its generator: fake by provenance, in both

    r = _cli(service_stack, "submit", str(src), "--wait", "--out", str(tmp_path / "service"))
    assert r.returncode == 0, r.stderr[-3000:]
    job = json.loads(r.stdout)
    assert job["state"] == "partially_succeeded" and job["counts"]["total"] == N + 2
    assert "upload" in r.stderr and "processing" in r.stderr  # the two progress bars

    run_scan([src], tmp_path / "scan", checkpoint=tiny_checkpoint, device="cpu", progress=False)
    got, want = _records(tmp_path / "service"), _records(tmp_path / "scan")
    assert len(got) == len(want) == N + 2
    assert [g["decided_by"] for g in got if g["file"].endswith("sd.png")] == ["provenance"]
    for g, w in zip(got, want, strict=True):
        prob_g, prob_w = g.pop("fake_probability"), w.pop("fake_probability")
        dom_g, dom_w = g.pop("domain_score", None), w.pop("domain_score", None)
        assert (dom_g is None) == (dom_w is None)
        if dom_w is not None:
            assert dom_g == pytest.approx(dom_w, rel=1e-3, abs=1e-4), g["file"]
        if w["error"]:
            assert g["error"] and g["prediction"] is None
            g.pop("error"), w.pop("error")
        assert g == w
        if prob_w is not None:
            assert prob_g == pytest.approx(prob_w, rel=1e-4, abs=1e-6), g["file"]
    task1 = [json.loads((tmp_path / d / "task1.json").read_text()) for d in ("service", "scan")]
    assert task1[0] == task1[1]
    for sub in ("overlays", "thumbs"):
        assert sorted(p.name for p in (tmp_path / "service" / sub).iterdir()) == sorted(
            p.name for p in (tmp_path / "scan" / sub).iterdir()
        )
    for p in sorted((tmp_path / "scan" / "thumbs").iterdir())[:50]:
        assert (tmp_path / "service" / "thumbs" / p.name).read_bytes() == p.read_bytes()
    for p in sorted((tmp_path / "scan" / "overlays").iterdir())[:50]:
        a = np.asarray(Image.open(io.BytesIO(p.read_bytes())), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "service" / "overlays" / p.name), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).mean() < 2.0  # same heatmap; batch order may move a bit
    assert "GradCAM" in (tmp_path / "service" / "report.html").read_text()

    # status and results on their own, and a second tenant's key sees nothing.
    r = _cli(service_stack, "status", job["id"])
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "partially_succeeded"
    r = _cli(service_stack, "results", job["id"], "--out", str(tmp_path / "again"), "--no-thumbnails")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "again" / "results.jsonl").read_text() == (tmp_path / "service" / "results.jsonl").read_text()
    r = _cli(service_stack, "status", job["id"], key=service_stack.keys["b"])
    assert r.returncode != 0 and "404" in r.stderr


def test_client_resumes_with_an_idempotency_key_and_cancels(service_stack: ServiceStack, tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(32_000 + i))
    with FakescopeClient(service_stack.api_url, service_stack.keys["a"]) as fs:
        # One PUT per image (the path for clients that send images one by one), resumed by its key.
        first = fs.submit([tmp_path], idempotency_key="client-resume-1", shards=False)
        again = fs.submit([tmp_path], idempotency_key="client-resume-1", shards=False)
        assert again["id"] == first["id"]
        done = fs.wait(first["id"], timeout=300)
        assert done["state"] == "succeeded" and done["counts"]["done"] == 5
        assert [r["name"] for r in fs.results(first["id"])] == [f"{i}.png" for i in range(5)]
        assert fs.cancel(first["id"])["state"] == "succeeded"  # finished jobs stay as they are


def test_client_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAKESCOPE_API_KEY", raising=False)
    monkeypatch.setenv("FAKESCOPE_CLIENT_CONFIG", "/nonexistent/client.json")
    with pytest.raises(ValueError, match="FAKESCOPE_API_KEY"):
        FakescopeClient("http://127.0.0.1:1")


def _keys(st: ServiceStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKESCOPE_")}
    env["FAKESCOPE_DATABASE_URL"] = st.svc.settings.sqlalchemy_url
    return subprocess.run(
        [sys.executable, "-m", "fakescope.cli", "keys", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_keys_are_created_listed_and_revoked_from_the_cli(service_stack: ServiceStack) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    made = _keys(service_stack, "create", "--tenant", tenant)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    with httpx.Client(base_url=service_stack.api_url, headers={"X-API-Key": key}, timeout=30) as c:
        assert c.get("/v1/jobs").status_code == 200
        listed = _keys(service_stack, "list", "--tenant", tenant)
        assert listed.returncode == 0 and key not in listed.stdout  # prefixes, never the key
        (line,) = listed.stdout.splitlines()
        assert line.startswith(key[:12]) and "revoked -" in line
        assert _keys(service_stack, "revoke", key[:12]).returncode == 0
        assert c.get("/v1/jobs").json() == {"detail": "Invalid API key"}
    assert "revoked 20" in _keys(service_stack, "list", "--tenant", tenant).stdout
    assert _keys(service_stack, "revoke", key[:12]).returncode == 1  # nothing active left to revoke


def test_a_report_link_reads_its_job_and_nothing_else(service_stack: ServiceStack) -> None:
    with service_stack.client() as c:
        hook = {"callback_url": "http://127.0.0.1:9/hook"}  # the tenant's receiver: not the report's to show
        job = c.post("/v1/jobs", files=[("files", ("1.png", png_bytes(61), "image/png"))], data=hook).json()
        other = c.post("/v1/jobs", files=[("files", ("2.png", png_bytes(62), "image/png"))]).json()
        link = c.post(f"/v1/jobs/{job['id']}/report-link")
        assert link.status_code == 201, link.text
        body = link.json()
    assert body["url"] == f"{service_stack.api_url}/report/{job['id']}#token={body['token']}"
    service_stack.wait_job(job["id"])
    with httpx.Client(base_url=service_stack.api_url, headers={"X-Report-Token": body["token"]}, timeout=30) as r:
        shown = r.get(f"/v1/jobs/{job['id']}").json()
        assert shown["state"] == "succeeded" and shown["callback_url"] is None
        assert r.get(f"/v1/jobs/{job['id']}/results").json()["count"] == 1
        deliveries = r.get(f"/v1/jobs/{job['id']}/deliveries")
        assert deliveries.status_code == 403
        assert deliveries.json() == {"detail": "A report token does not read webhook deliveries"}
        assert r.get(f"/v1/jobs/{other['id']}").json() == {"detail": "A report token only reads its own job"}
        assert r.get("/v1/jobs").status_code == 403
        assert r.delete(f"/v1/jobs/{job['id']}").status_code == 401  # no key: it cannot cancel
        assert r.post(f"/v1/jobs/{job['id']}/report-link").status_code == 401  # nor make more links
        forged = body["token"][:-1] + ("0" if body["token"][-1] != "0" else "1")
        bad = r.get(f"/v1/jobs/{job['id']}", headers={"X-Report-Token": forged})
        assert (bad.status_code, bad.json()) == (401, {"detail": "Invalid or expired report token"})
        # A MAC with a non-ASCII character (a header carries Latin-1) is refused like any other, not a 500.
        latin = (body["token"][:-1] + "\u00e9").encode("latin-1")
        odd = r.get(f"/v1/jobs/{job['id']}", headers=[(b"X-Report-Token", latin)])
        assert (odd.status_code, odd.json()) == (401, {"detail": "Invalid or expired report token"})
    # Expired: a token made with the service's own secret, a second in the past.
    expired = make_report_token(
        service_stack.svc.settings.secret_key,
        job_id=uuid.UUID(job["id"]),
        tenant_id=_tenant_of(service_stack, job["id"]),
        expires=int(time.time()) - 1,
    )
    gone = httpx.get(f"{service_stack.api_url}/v1/jobs/{job['id']}", headers={"X-Report-Token": expired})
    assert gone.status_code == 401


def _tenant_of(st: ServiceStack, job_id: str) -> uuid.UUID:
    from fakescope.db.models import Job

    with st.svc.session() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job.tenant_id
