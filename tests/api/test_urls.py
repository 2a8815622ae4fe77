"""Image URLs through the real API, broker, workers, database and object store: the workers fetch what
the guard allows, and every URL that is refused or fails fails its own item; nothing else is lost."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fakescope.cli import main
from fakescope.client import FakescopeClient
from tests.utils.image_server import IMAGES, image_server
from tests.utils.stack import ServiceStack


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with image_server() as url:
        yield url


def test_a_url_job_classifies_what_it_may_fetch_and_fails_the_rest_one_by_one(
    service_stack: ServiceStack, base: str
) -> None:
    good = [f"{base}/img/0.png", f"{base}/img/1.png", f"{base}/redirect"]
    bad = {
        "http://10.1.2.3/a.png": "url points at a non-public address (10.1.2.3); not allowed",
        "http://169.254.169.254/latest/meta-data/": "url points at a non-public address (169.254.169.254); not allowed",
        f"{base}/to-metadata": "url points at a non-public address (169.254.169.254); not allowed",
        f"{base}/endless": f"url's image is over the limit of {2 * 1024**2} bytes",
        f"{base}/slow": "url took longer than 3 s to fetch",
        f"{base}/text": "url did not return an image (its bytes are no image format fakescope reads)",
        f"{base}/missing.png": "url answered HTTP 404",
        "ftp://example.com/a.png": "url must be an http or https URL",
    }
    urls = [*good, *bad]
    with FakescopeClient(service_stack.api_url, service_stack.keys["a"]) as client:
        created = client.submit_urls(urls, fake_threshold=0.5)
        assert created["counts"]["total"] == len(urls)
        job = client.wait(created["id"], timeout=120)
        assert job["state"] == "partially_succeeded", job
        assert (job["counts"]["done"], job["counts"]["failed"]) == (len(good), len(bad))
        results = list(client.results(job["id"]))
        failures = {f["name"]: f["error"] for f in client.failures(job["id"])}
        assert failures == bad
        assert [r["name"] for r in results] == good
        # The fetched bytes are the item's original: hashed, and served back by the image route.
        with service_stack.client() as c:
            for r in results:
                got = c.get(r["image_url"])
                assert got.status_code == 200
                path = "/img/0.png" if r["name"].endswith("redirect") else r["name"][len(base) :]
                assert got.content == IMAGES[path]
                assert r["sha256"] and r["prediction"] in ("real", "fake")

        # The synchronous check takes a URL too, and answers a refused one with its reason.
        one = client.detect(f"{base}/img/2.png")
        assert one["name"] == f"{base}/img/2.png" and one["fake_probability"] is not None
    with service_stack.client() as c:
        resp = c.post("/v1/detect", data={"url": f"{base}/to-metadata"})
        assert resp.status_code == 422 and resp.json() == {"detail": bad[f"{base}/to-metadata"]}
        resp = c.post("/v1/detect", data={})
        assert resp.status_code == 422 and resp.json() == {"detail": "Send either a file or a url"}
        # A URL job is validated like any other: no empty list, no spaces in a URL.
        assert c.post("/v1/jobs/urls", json={"urls": []}).status_code == 422
        assert c.post("/v1/jobs/urls", json={"urls": ["https://a b/"]}).status_code == 422


def test_the_cli_submits_urls_and_sets_the_operating_point(
    service_stack: ServiceStack, base: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKESCOPE_API_KEY", service_stack.keys["b"])
    api = ["--api", service_stack.api_url]
    capsys.readouterr()
    assert main(["operating-point", "--fake-threshold", "0.8", "--real-threshold", "0.2", *api]) == 0
    assert json.loads(capsys.readouterr().out) == {"fake_threshold": 0.8, "real_threshold": 0.2}
    try:
        assert main(["submit", f"{base}/img/0.png", f"{base}/missing.png", "--wait", *api]) == 0
        job = json.loads(capsys.readouterr().out)
        assert job["state"] == "partially_succeeded" and (job["fake_threshold"], job["real_threshold"]) == (0.8, 0.2)
        assert (job["counts"]["done"], job["counts"]["failed"]) == (1, 1)
        # Files and URLs are not mixed in one job.
        with pytest.raises(SystemExit, match="give files or URLs, not both"):
            main(["submit", f"{base}/img/0.png", __file__, *api])
    finally:
        assert main(["operating-point", "--fake-threshold", "0.5", *api]) == 0
    capsys.readouterr()
    assert main(["operating-point", *api]) == 0
    assert json.loads(capsys.readouterr().out) == {"fake_threshold": 0.5, "real_threshold": None}
