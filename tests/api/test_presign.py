"""Presigned URLs expire: moto's S3 server checks neither signatures nor expiry, so the proof is the
URL itself, SigV4 query authentication, whose signature covers the date and lifetime it states."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from api.routes.jobs import ORIGINAL_CHANGED
from tests.utils.stack import ServiceStack, png_bytes


def _sigv4_query_signature(url: str, secret: str, region: str, method: str = "GET") -> str:
    """The signature AWS S3 (and MinIO) computes for a presigned URL, from everything but the signature."""
    parts = urlsplit(url)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))
    q = dict(params)
    canonical = "\n".join([
        method, parts.path, canonical_query, f"host:{parts.netloc}\n", q["X-Amz-SignedHeaders"], "UNSIGNED-PAYLOAD",
    ])  # fmt: skip
    date = q["X-Amz-Date"]
    scope = f"{date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_result_urls_are_signed_for_the_configured_lifetime(service_stack: ServiceStack) -> None:
    settings = service_stack.svc.settings
    with service_stack.client() as c:
        r = c.post("/v1/jobs", files=[("files", ("p.png", png_bytes(88), "image/png"))])
        job = service_stack.wait_job(r.json()["id"])
        (item,) = c.get(f"/v1/jobs/{job['id']}/results").json()["data"]
    # The overlay, and an original stored in its upload window's shard, are the API's own signed URLs
    # (it draws the overlay on first use, and reads the original's range), for the same lifetime.
    for field, path in (("overlay_url", "overlay.png"), ("image_url", "image")):
        o = urlsplit(item[field])
        q = dict(parse_qsl(o.query))
        assert o.path == f"/v1/jobs/{job['id']}/items/0/{path}"
        assert abs(int(q["expires"]) - time.time() - settings.presign_expiry_s) < 120
        stretched = item[field].replace(f"expires={q['expires']}", f"expires={int(q['expires']) + 86400}")
        assert httpx.get(stretched, timeout=30).status_code == 403
        assert httpx.get(item[field], timeout=30).status_code == 200
    assert httpx.get(item["image_url"], timeout=30).content == png_bytes(88)
    # An image uploaded whole through its own presigned URL is served by the API too, which checks the
    # bytes are still the ones classified: the upload URL outlives the start, and whatever is PUT
    # through it afterwards must not appear under this verdict (image or overlay).
    with service_stack.client() as c:
        created = c.post("/v1/jobs/uploads", json={"names": ["q.png"]}).json()
        upload_url = created["uploads"][0]["upload_url"]
        assert httpx.put(upload_url, content=png_bytes(89), timeout=30).status_code == 200
        started = c.post(created["start_url"]).json()
        service_stack.wait_job(started["id"])
        (whole,) = c.get(f"/v1/jobs/{started['id']}/results").json()["data"]
    assert urlsplit(whole["image_url"]).path == f"/v1/jobs/{started['id']}/items/0/image"
    assert httpx.get(whole["image_url"], timeout=30).content == png_bytes(89)
    assert httpx.put(upload_url, content=png_bytes(90), timeout=30).status_code == 200  # after the verdict
    replaced = httpx.get(whole["image_url"], timeout=30)
    assert replaced.status_code == 409
    assert replaced.json()["detail"] == ORIGINAL_CHANGED
    assert httpx.get(whole["overlay_url"], timeout=30).status_code == 404
    # The presigned upload URL is signed for the configured lifetime, and S3 checks it.
    for url in (upload_url,):
        q = dict(parse_qsl(urlsplit(url).query))
        assert int(q["X-Amz-Expires"]) == settings.presign_expiry_s
        signed_at = datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - signed_at).total_seconds()) < 120
        assert q["X-Amz-Credential"].startswith(settings.s3.access_key + "/")
        # The signature covers X-Amz-Date and X-Amz-Expires: S3 refuses the URL after date + expires, and
        # stretching the lifetime in the query breaks the signature.
        expected = _sigv4_query_signature(url, settings.s3.secret_key, settings.s3.region, "PUT")
        assert q["X-Amz-Signature"] == expected
        stretched = url.replace(f"X-Amz-Expires={settings.presign_expiry_s}", "X-Amz-Expires=604800")
        resigned = _sigv4_query_signature(stretched, settings.s3.secret_key, settings.s3.region, "PUT")
        assert resigned != q["X-Amz-Signature"]
