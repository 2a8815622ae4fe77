"""Provenance end to end: files built and signed here, through `fakescope scan` and through the job
service (uploaded, stored in a shard, classified by the worker code on real Postgres and S3), give the
same provenance and verdicts: a C2PA-signed JPEG declaring trainedAlgorithmicMedia is fake by
provenance, the same file with one byte of pixel data changed is tampered (its claims not counted),
a Stable Diffusion PNG and a JPEG with an XMP digital source type declare generation, and a plain
camera-style JPEG declares nothing."""

from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from fakescope.db.models import JobItem
from fakescope.detector import Detector
from fakescope.imageio import InputItem
from fakescope.scan import run_scan
from fakescope.service import uploads
from fakescope.service.processing import classify_chunk
from fakescope.service.tenants import create_api_key
from tests.core.test_provenance import (
    A1111_PARAMETERS,
    TRAINED,
    _jpeg,
    _png,
    _sign,
    _with_app1_xmp,
    _xmp,
    signing,  # noqa: F401 (the fixture, used by name)
)
from tests.utils.chunks import Chunks
from tests.utils.stack import ServiceEnv


def _files(certs: dict[str, Any]) -> dict[str, bytes]:
    signed = _sign(certs, TRAINED, "jpeg")
    tampered = bytearray(signed)
    tampered[-10] ^= 0xFF  # one byte inside the entropy-coded scan, before EOI
    return {
        "signed.jpg": signed,
        "tampered.jpg": bytes(tampered),
        "sd.png": _png({"parameters": A1111_PARAMETERS}),
        "xmp.jpg": _with_app1_xmp(_jpeg(), _xmp(source_type=TRAINED).encode()),
        "camera.jpg": _jpeg({0x010F: "Canon", 0x0110: "Canon EOS R5", 0x0131: "Firmware 1.8.1"}),
    }


def _expect(name: str, provenance: dict[str, Any] | None, decided_by: str, prediction: str, prob: float) -> None:
    if name == "camera.jpg":
        assert provenance is None and decided_by == "detector", provenance
        assert prediction == ("fake" if prob >= 0.5 else "real")
        return
    assert provenance is not None, name
    if name == "tampered.jpg":
        assert provenance["tampered"] and not provenance["declares_ai"], provenance
        assert "assertion.dataHash.mismatch" in provenance["c2pa"]["validation_errors"]
        assert decided_by == "detector"
        return
    assert provenance["declares_ai"] and decided_by == "provenance" and prediction == "fake", (name, provenance)
    expected = {"signed.jpg": "c2pa", "sd.png": "png_text", "xmp.jpg": "xmp"}[name]
    assert expected in provenance["sources"], (name, provenance["sources"])


@pytest.mark.slow
def test_provenance_through_scan_and_the_job_service(
    signing: dict[str, Any],  # noqa: F811
    service_env: ServiceEnv,
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    files = _files(signing)
    src = tmp_path / "in"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    run_scan([src], tmp_path / "scan", checkpoint=tiny_checkpoint, device="cpu", progress=False)
    scanned = {r["file"]: r for r in map(json.loads, (tmp_path / "scan" / "results.jsonl").read_text().splitlines())}
    for name, r in scanned.items():
        _expect(name, r["provenance"], r["decided_by"], r["prediction"], r["fake_probability"])

    detector = Detector.load(tiny_checkpoint, device="cpu")
    chunks = Chunks()
    with service_env.session() as session:
        tenant, _ = create_api_key(session, tenant_name=f"prov-{uuid.uuid4().hex[:6]}")
        inputs = [InputItem(n, functools.partial(bytes, d)) for n, d in files.items()]
        job, _ = uploads.create_job(
            session,
            service_env.store,
            chunks,
            uploads.JobRequest(tenant_id=tenant.id),
            inputs=inputs,
        )
        for job_id, ids in chunks.sent:
            classify_chunk(session, service_env.store, detector, job_id=job_id, item_ids=ids)
        rows = session.exec(select(JobItem).where(JobItem.job_id == job.id)).all()
    assert len(rows) == len(files)
    for row in rows:
        _expect(row.name, row.provenance, row.decided_by or "", row.prediction or "", row.fake_probability or 0.0)
        # The same answer as the scan's, and the detector's own probability kept either way.
        assert row.provenance == scanned[row.name]["provenance"]
        assert row.fake_probability == pytest.approx(scanned[row.name]["fake_probability"], rel=1e-4, abs=1e-6)
