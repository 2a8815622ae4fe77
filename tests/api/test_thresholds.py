"""Operating points through the real API, workers, database and object store: the same images at three
points give the verdicts, counts, answer files and report rows each implies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakescope.client import FakescopeClient
from fakescope.result import OperatingPoint
from tests.utils.stack import ServiceStack, png_bytes

FILES = [(f"{i}.png", png_bytes(61_000 + i)) for i in range(8)]


def _multipart(stack: ServiceStack, tenant: str = "a", **form: Any) -> dict[str, Any]:
    with stack.client(tenant) as c:
        files = [("files", (n, b, "image/png")) for n, b in FILES]
        r = c.post("/v1/jobs", files=files, data={k: str(v) for k, v in form.items()})
        assert r.status_code == 202, r.text
    return stack.wait_job(r.json()["id"], tenant=tenant)


def _results(stack: ServiceStack, job_id: str, tenant: str = "a") -> list[dict[str, Any]]:
    with stack.client(tenant) as c:
        return c.get(f"/v1/jobs/{job_id}/results", params={"limit": 100}).json()["data"]


def _expect(job: dict[str, Any], results: list[dict[str, Any]], point: OperatingPoint) -> None:
    """Every verdict is the point's for its probability, and the counts are those verdicts'."""
    assert (job["fake_threshold"], job["real_threshold"]) == (point.fake_threshold, point.real_threshold)
    for r in results:
        assert r["prediction"] == point.verdict(r["fake_probability"], r["decided_by"]), r
    c = job["counts"]
    for verdict in ("real", "fake", "uncertain"):
        assert c[verdict] == sum(r["prediction"] == verdict for r in results), (verdict, c)
    assert c["real"] + c["fake"] + c["uncertain"] == c["done"] == len(FILES)
    assert c["out_of_domain"] == sum(r["in_domain"] is False for r in results)


def test_three_operating_points_give_the_verdicts_counts_and_reports_they_imply(
    service_stack: ServiceStack, tmp_path: Path
) -> None:
    default = _multipart(service_stack)
    first = _results(service_stack, default["id"])
    _expect(default, first, OperatingPoint())
    # Thresholds between the probabilities these images got, so each point splits them its own way.
    probs = sorted(r["fake_probability"] for r in first)
    assert len(set(probs)) >= 4, probs
    low, mid, high = ((probs[i] + probs[i + 1]) / 2 for i in (1, len(probs) // 2 - 1, len(probs) - 3))
    strict = OperatingPoint(fake_threshold=high)
    banded = OperatingPoint(fake_threshold=high, real_threshold=low)

    # The strict point by a multipart upload, the banded one through presigned uploads (the client):
    # both answered from the result cache, which keeps the probability and not the earlier verdict.
    strict_job = _multipart(service_stack, fake_threshold=high)
    _expect(strict_job, _results(service_stack, strict_job["id"]), strict)
    with FakescopeClient(service_stack.api_url, service_stack.keys["a"]) as client:
        paths = []
        for name, data in FILES:
            (tmp_path / name).write_bytes(data)
            paths.append(tmp_path / name)
        job = client.submit(paths, fake_threshold=high, real_threshold=low)
        banded_job = client.wait(job["id"], timeout=120)
        banded_results = _results(service_stack, banded_job["id"])
        _expect(banded_job, banded_results, banded)
        assert banded_job["counts"]["uncertain"] >= 2 and banded_job["counts"]["real"] >= 2

        # The answer files keep the task's binary format: uncertain is written as real.
        task1, _ = client.task_files(banded_job["id"])
        by_name = {r["name"]: r["prediction"] for r in banded_results}
        assert {t["index"]: t["prediction"] for t in task1} == {
            int(n.split(".")[0]): "fake" if v == "fake" else "real" for n, v in by_name.items()
        }
        # The report rows: the downloaded report counts and marks each verdict.
        client.download(banded_job["id"], tmp_path / "banded", thumbnails=False)
        page = (tmp_path / "banded" / "report.html").read_text()
        assert f"<span>{banded_job['counts']['uncertain']} uncertain</span>" in page
        assert page.count('class="card uncertain') == banded_job["counts"]["uncertain"]
        assert page.count('class="card fake') == banded_job["counts"]["fake"]

        # The tenant's default applies to jobs that name no thresholds, and not to another tenant's.
        assert client.operating_point() == {"fake_threshold": 0.5, "real_threshold": None}
        assert client.set_operating_point(mid, low) == {"fake_threshold": mid, "real_threshold": low}
        try:
            tenant_job = _multipart(service_stack)
        finally:
            client.set_operating_point(0.5)  # the stack is shared: the other tests expect the default
    tenant_point = OperatingPoint(fake_threshold=mid, real_threshold=low)
    _expect(tenant_job, _results(service_stack, tenant_job["id"]), tenant_point)
    other = _multipart(service_stack, tenant="b")
    _expect(other, _results(service_stack, other["id"], tenant="b"), OperatingPoint())

    with service_stack.client() as c:
        # Out of order, or out of range: refused before anything is stored.
        r = c.post("/v1/jobs", files=[("files", FILES[0])], data={"fake_threshold": "0.2", "real_threshold": "0.6"})
        assert r.status_code == 422 and r.json() == {"detail": "real_threshold must not be above fake_threshold"}
        assert c.post("/v1/jobs", files=[("files", FILES[0])], data={"fake_threshold": "1.5"}).status_code == 422
        assert c.put("/v1/operating-point", json={"fake_threshold": 0.3, "real_threshold": 0.4}).status_code == 422
        # The synchronous check takes the same override.
        one = c.post("/v1/detect", files={"file": FILES[0]}, data={"fake_threshold": str(probs[0] / 2)})
        assert one.status_code == 200, one.text
        assert one.json()["prediction"] == "fake"
