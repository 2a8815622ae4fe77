"""The result contract (fakescope.result) walked through every reader, field by field.

Nothing here lists the fields: each test iterates over ``RESULT_FIELDS``, so a field added to the
contract is checked in the table, the API's schema and answers, the cache's copy, ``results.jsonl``
from a scan and from the client's download, and the report, with no change to this file.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin
from sqlalchemy import inspect

from api.main import create_app
from api.schemas import ItemResult
from fakescope.client import FakescopeClient
from fakescope.db.models import JobItem
from fakescope.result import RESULT_FIELDS, ResultContract
from fakescope.scan import run_scan
from tests.utils.stack import ServiceStack, png_bytes


def _declared_png() -> bytes:
    """An image whose PNG text says a generator made it: provenance and decided_by are not empty."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32")
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 80, 40)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


FILES = {"0.png": png_bytes(9100), "1.png": png_bytes(9101, size=48), "2.png": _declared_png()}


def test_every_field_is_a_column_and_in_the_api_schema() -> None:
    columns = set(inspect(JobItem).local_table.columns.keys())
    assert set(RESULT_FIELDS) <= columns
    assert set(RESULT_FIELDS) <= set(ItemResult.model_fields)
    schema = create_app().openapi()["components"]["schemas"]["ItemResult"]["properties"]
    assert {*RESULT_FIELDS, "in_domain"} <= set(schema)


def _results(stack: ServiceStack, job_id: str) -> dict[str, dict[str, Any]]:
    with stack.client() as c:
        return {r["name"]: r for r in c.get(f"/v1/jobs/{job_id}/results").json()["data"]}


def _submit(stack: ServiceStack) -> str:
    with stack.client() as c:
        r = c.post("/v1/jobs", files=[("files", (n, b, "image/png")) for n, b in FILES.items()])
        assert r.status_code == 202, r.text
    return stack.wait_job(r.json()["id"])["id"]


def _jsonl(path: Path) -> dict[str, dict[str, Any]]:
    return {Path(r["file"]).name: r for r in map(json.loads, path.open())}


def test_every_field_reaches_the_api_the_cache_results_jsonl_and_the_report(
    service_stack: ServiceStack, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    first = _submit(service_stack)
    fresh = _results(service_stack, first)
    cached = _results(service_stack, _submit(service_stack))
    for name in FILES:
        assert fresh[name]["cached"] is False and cached[name]["cached"] is True
        for field in RESULT_FIELDS:
            assert fresh[name][field] is not None or field in ("provenance",), (name, field)
            assert cached[name][field] == fresh[name][field], (name, field)
        assert fresh[name]["in_domain"] == ResultContract(**fresh[name]).in_domain
    assert fresh["2.png"]["provenance"]["generator"] == "AUTOMATIC1111"
    assert fresh["2.png"]["decided_by"] == "provenance"

    # The same bytes through fakescope scan, and the job through the client's download: one record each.
    (tmp_path / "in").mkdir()
    for name, data in FILES.items():
        (tmp_path / "in" / name).write_bytes(data)
    run_scan([tmp_path / "in"], tmp_path / "scan", checkpoint=str(tiny_checkpoint), progress=False)
    with FakescopeClient(service_stack.api_url, service_stack.keys["a"]) as client:
        downloaded = client.download(first, tmp_path / "download")
    scanned, fetched = _jsonl(tmp_path / "scan" / "results.jsonl"), _jsonl(downloaded / "results.jsonl")
    for name in FILES:
        for field in (*RESULT_FIELDS, "in_domain"):
            assert field in scanned[name] and field in fetched[name], (name, field)
            assert fetched[name][field] == fresh[name][field], (name, field)
            want = fresh[name][field]
            got = scanned[name][field]
            # The scan batches and threads differently from a worker: floats agree to rounding.
            assert got == want or (isinstance(want, float) and math.isclose(got, want, rel_tol=1e-4)), (name, field)
    report = (tmp_path / "scan" / "report.html").read_text()
    for name in FILES:
        r = scanned[name]
        shown = (
            f"score {r['domain_score']:.1f}" if r["in_domain"] is False else f"P(fake) = {r['fake_probability']:.3f}"
        )
        assert name in report and shown in report, (name, shown)
    assert "AUTOMATIC1111" in report  # the provenance line
