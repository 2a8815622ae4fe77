"""Hostile and malformed input on every route of the real stack: each gets its exact status and reason.

Archive bombs, archives past the member limit, path traversal, pixel bombs and corrupt members fail as
items of their own while the good images of the same batch are classified; bad bodies, ids and
pagination are refused with 4xx, never 500.
"""

from __future__ import annotations

import io
import struct
import tarfile
import tempfile
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.deps import MAX_OFFSET
from fakescope.db.models import ITEM_NAME_MAX
from fakescope.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_MEMBERS, DEFAULT_MAX_PIXELS
from tests.utils.stack import ServiceStack, png_bytes

UNSAFE = "unsafe path in archive (absolute or '..')"
NIL = "00000000-0000-0000-0000-000000000000"
JOB_ROUTES = [
    ("GET", ""),
    ("DELETE", ""),
    ("POST", "/start"),
    ("GET", "/results"),
    ("GET", "/failures"),
    ("GET", "/task1.json"),
    ("GET", "/task2.json"),
    ("GET", "/deliveries"),
]


OVERLAPPING = ({"name": "a", "offset": 0, "length": 100}, {"name": "b", "offset": 50, "length": 100})


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header declaring ``width`` x ``height``, with one row of data: a pixel bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_crc_zip() -> bytes:
    """A stored member whose bytes no longer match its CRC (a corrupted or tampered archive)."""
    data = bytearray(_zip({"flipped.png": png_bytes(40)}, zipfile.ZIP_STORED))
    data[30 + len("flipped.png") + 20] ^= 0xFF  # a byte inside the member's data, past the local header
    return bytes(data)


def _items(c: httpx.Client, job_id: str) -> tuple[dict[str, Any], dict[str, str | None]]:
    results = c.get(f"/v1/jobs/{job_id}/results", params={"limit": 1000}).json()["data"]
    failures = c.get(f"/v1/jobs/{job_id}/failures", params={"limit": 1000}).json()["data"]
    return {r["name"]: r for r in results}, {f["name"]: f["error"] for f in failures}


@pytest.mark.slow
def test_hostile_archives_and_images_fail_alone(service_stack: ServiceStack) -> None:
    marker = f"fakescope-escape-{uuid.uuid4().hex[:8]}"
    bomb = b"\0" * (DEFAULT_MAX_BYTES + 1)  # deflates to ~65 KB; its declared size is over the per-file limit
    files = [
        ("files", ("good.png", png_bytes(1), "image/png")),
        # The content type is the client's word and is not trusted either way: bytes decide.
        ("files", ("as-text.png", png_bytes(2), "text/plain")),
        ("files", ("bomb.zip", _zip({"bomb.png": bomb, "inner-good.png": png_bytes(3)}), "application/zip")),
        (
            "files",
            (
                "../../traversal.zip",  # the upload's own name climbs too: only its last part is kept
                _zip(
                    {
                        f"../../{marker}.png": png_bytes(4),
                        f"/tmp/{marker}-abs.png": png_bytes(5),
                        f"..\\..\\{marker}-win.png": png_bytes(6),
                        "sub/ok.png": png_bytes(7),
                    }
                ),
                "application/zip",
            ),
        ),
        ("files", ("traversal.tar.gz", _tar({f"../{marker}.png": png_bytes(8), "t.png": png_bytes(9)}), "x/y")),
        ("files", ("crc.zip", _bad_crc_zip(), "application/zip")),
        ("files", ("huge.png", _png_header_only(20_000, 20_000), "image/png")),
        ("files", ("big.png", _png_header_only(8000, 6000), "image/png")),
        ("files", ("../../../etc/passwd.png", png_bytes(10), "image/png")),
        ("files", ("x" * 3000 + ".png", png_bytes(11), "image/png")),
    ]
    with service_stack.client() as c:
        r = c.post("/v1/jobs", files=files)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        job = service_stack.wait_job(job_id)
        results, failures = _items(c, job_id)
    long_name = "x" * 511 + "…" + "x" * 508 + ".png"
    assert len(long_name) == ITEM_NAME_MAX
    assert set(results) == {
        "good.png",
        "as-text.png",
        "bomb.zip/inner-good.png",
        "traversal.zip/sub/ok.png",
        "traversal.tar.gz/t.png",
        "passwd.png",
        long_name,
    }
    assert all(r["prediction"] in ("real", "fake") for r in results.values())
    assert failures == {
        "bomb.zip/bomb.png": f"archive member is {DEFAULT_MAX_BYTES + 1} bytes, over the limit of {DEFAULT_MAX_BYTES}",
        f"traversal.zip/../../{marker}.png": UNSAFE,
        f"traversal.zip//tmp/{marker}-abs.png": UNSAFE,
        f"traversal.zip/..\\..\\{marker}-win.png": UNSAFE,
        f"traversal.tar.gz/../{marker}.png": UNSAFE,
        "crc.zip/flipped.png": "corrupt archive member: Bad CRC-32 for file 'flipped.png'",
        # Pillow refuses this one while reading the header (past twice its own limit); same words as ours.
        "huge.png": f"image is 400000000 pixels, over the limit of {DEFAULT_MAX_PIXELS}",
        "big.png": f"image is 8000x6000 = 48000000 pixels, over the limit of {DEFAULT_MAX_PIXELS}",
    }
    assert (job["state"], job["counts"]["done"], job["counts"]["failed"]) == ("partially_succeeded", 7, 8)
    # Nothing is extracted, so nothing lands where the member names point (the API runs on this machine).
    for folder in {Path(tempfile.gettempdir()), Path(tempfile.gettempdir()).parent, Path("/etc"), Path.cwd()}:
        assert not list(folder.glob(f"{marker}*")), folder


@pytest.mark.slow
def test_an_archive_past_the_member_limit_fails_as_one_item(service_stack: ServiceStack) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(DEFAULT_MAX_MEMBERS + 1):
            zf.writestr(f"m/{i:06d}.png", b"")
    files = [
        ("files", ("many.zip", buf.getvalue(), "application/zip")),
        ("files", ("ok.png", png_bytes(20), "image/png")),
    ]
    with service_stack.client() as c:
        r = c.post("/v1/jobs", files=files)
        assert r.status_code == 202, r.text
        job = service_stack.wait_job(r.json()["id"])
        results, failures = _items(c, job["id"])
    assert list(results) == ["ok.png"]
    n = DEFAULT_MAX_MEMBERS + 1
    assert failures == {"many.zip": f"archive has {n} members, over the limit of {DEFAULT_MAX_MEMBERS}"}
    assert job["counts"]["total"] == 2


def test_malformed_bodies_and_wrong_content_types(service_stack: ServiceStack) -> None:
    with service_stack.client() as c:
        r = c.post("/v1/jobs", json={"files": ["a.png"]})
        assert (r.status_code, r.json()["detail"]) == (
            422,
            [{"type": "missing", "loc": ["body", "files"], "msg": "Field required", "input": None}],
        )
        r = c.post("/v1/jobs", content=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=xx"})
        assert (r.status_code, r.json()) == (400, {"detail": "Invalid multipart data."})
        r = c.post("/v1/jobs", content=b"garbage", headers={"Content-Type": "multipart/form-data"})
        assert (r.status_code, r.json()) == (400, {"detail": "Missing boundary in multipart."})
        r = c.post("/v1/jobs", files=[("files", ("a.png", png_bytes(30), "image/png"))], data={"explain": "maybe"})
        assert r.status_code == 422
        assert [(e["type"], e["loc"]) for e in r.json()["detail"]] == [("bool_parsing", ["body", "explain"])]
        r = c.post(
            "/v1/jobs", files=[("files", ("a.png", png_bytes(31), "image/png"))], data={"callback_url": "ftp://x"}
        )
        assert (r.status_code, r.json()) == (422, {"detail": "callback_url must be an http or https URL"})

        r = c.post("/v1/jobs/uploads", content=b'{"names": [', headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        [err] = r.json()["detail"]
        assert (err["type"], err["loc"][0], err["msg"]) == ("json_invalid", "body", "JSON decode error")
        r = c.post("/v1/jobs/uploads", content=b"names=a.png", headers={"Content-Type": "text/plain"})
        assert r.status_code == 422
        assert [(e["type"], e["loc"]) for e in r.json()["detail"]] == [("model_attributes_type", ["body"])]
        for body, kind, loc in [
            ({}, "value_error", ["body"]),  # neither names nor shards
            (
                {"names": ["a.png"], "shards": [{"members": [{"name": "b", "offset": 0, "length": 1}]}]},
                "value_error",
                ["body"],
            ),
            ({"shards": [{"members": []}]}, "too_short", ["body", "shards", 0, "members"]),
            (
                {"shards": [{"members": [{"name": "b", "offset": -1, "length": 1}]}]},
                "greater_than_equal",
                ["body", "shards", 0, "members", 0, "offset"],
            ),
            (  # two members over the same bytes: each would be a copy of them in the worker
                {"shards": [{"members": [OVERLAPPING[0], OVERLAPPING[1]]}]},
                "value_error",
                ["body"],
            ),
            ({"names": []}, "too_short", ["body", "names"]),
            ({"names": ["a.png"], "fake_threshold": 0}, "greater_than", ["body", "fake_threshold"]),
            ({"names": "a.png"}, "list_type", ["body", "names"]),
            ({"names": ["x" * (ITEM_NAME_MAX + 1)]}, "string_too_long", ["body", "names", 0]),
            ({"names": ["ok.png", "nul\x00.png"]}, "string_pattern_mismatch", ["body", "names", 1]),
            ({"names": ["a.png"], "explain": "maybe"}, "bool_parsing", ["body", "explain"]),
        ]:
            r = c.post("/v1/jobs/uploads", json=body)
            assert r.status_code == 422, (body, r.text)
            assert [(e["type"], e["loc"]) for e in r.json()["detail"]] == [(kind, loc)], body
        r = c.post("/v1/jobs/uploads", json={"names": ["a.png"], "callback_url": "http://127.0.0.1:1/x y"})
        assert r.status_code == 201, r.text  # a loopback address the test stack allows; a space is not our business
        r = c.post("/healthz")
        assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})


def test_unknown_and_malformed_job_ids(service_stack: ServiceStack) -> None:
    with service_stack.client() as c:
        for method, suffix in JOB_ROUTES:
            r = c.request(method, f"/v1/jobs/{uuid.uuid4()}{suffix}")
            assert (r.status_code, r.json()) == (404, {"detail": "Job not found"}), (method, suffix)
            r = c.request(method, f"/v1/jobs/{NIL}{suffix}")
            assert (r.status_code, r.json()) == (404, {"detail": "Job not found"}), (method, suffix)
            for bad in ("not-a-uuid", "1", "0" * 33, "%00"):
                r = c.request(method, f"/v1/jobs/{bad}{suffix}")
                assert r.status_code == 422, (method, suffix, bad, r.text)
                [err] = r.json()["detail"]
                assert (err["type"], err["loc"]) == ("uuid_parsing", ["path", "job_id"]), (method, suffix, bad)
        r = c.get("/report/not-a-uuid")
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "uuid_parsing"
        # The embedded object routes answer 404 when an S3 server holds the objects, signed or not.
        r = c.get("/objects/any/key.png", params={"expires": 1, "signature": "x"})
        assert (r.status_code, r.json()) == (404, {"detail": "Object not found"})
        r = c.put("/objects/../../etc/x.png", params={"expires": 1, "signature": "x"}, content=b"x")
        assert r.status_code == 404
        r = c.get("/objects/k.png", params={"expires": "soon", "signature": "x"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "expires"]


def test_pagination_is_bounded_never_a_server_error(service_stack: ServiceStack) -> None:
    with service_stack.client() as c:
        r = c.post("/v1/jobs", files=[("files", ("p.png", png_bytes(50), "image/png"))])
        job_id = r.json()["id"]
        service_stack.wait_job(job_id)
        pages = {"/v1/jobs": 500, f"/v1/jobs/{job_id}/results": 1000, f"/v1/jobs/{job_id}/failures": 1000}
        for path, max_limit in pages.items():
            cases: list[tuple[dict[str, int | str], str]] = [
                ({"offset": -1}, "greater_than_equal"),
                ({"offset": MAX_OFFSET + 1}, "less_than_equal"),
                ({"offset": 2**63}, "less_than_equal"),
                ({"offset": 10**40}, "less_than_equal"),
                ({"offset": "1e3"}, "int_parsing"),
                ({"limit": 0}, "greater_than_equal"),
                ({"limit": -5}, "greater_than_equal"),
                ({"limit": max_limit + 1}, "less_than_equal"),
                ({"limit": 2**64}, "less_than_equal"),
            ]
            for params, kind in cases:
                r = c.get(path, params=params)
                assert r.status_code == 422, (path, params, r.text)
                [err] = r.json()["detail"]
                assert (err["type"], err["loc"]) == (kind, ["query", next(iter(params))]), (path, params)
            r = c.get(path, params={"offset": MAX_OFFSET, "limit": max_limit})
            assert r.status_code == 200, (path, r.text)
            assert r.json()["data"] == []
        page = c.get(f"/v1/jobs/{job_id}/results", params={"offset": 0, "limit": 1}).json()
        assert (page["count"], page["offset"], page["limit"], len(page["data"])) == (1, 0, 1, 1)
