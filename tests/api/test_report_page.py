"""The job report page in headless Chromium (Debian's chromium and chromium-driver, through Selenium).

The page loads a finished job's images with verdicts, overlays and explanations, the filters work, a
second tenant's key sees nothing, and a screenshot is kept in ``$FAKESCOPE_TEST_ARTIFACTS`` (default
``.test-artifacts/`` in the repository).
"""

from __future__ import annotations

import io
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import pytest
from PIL import Image

from fakescope.detector import Detector
from tests.utils.stack import ServiceStack, png_bytes

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("FAKESCOPE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / ".test-artifacts"))

webdriver = pytest.importorskip("selenium.webdriver")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("Debian chromium and chromium-driver are missing (.ci/run installs them)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

T = TypeVar("T")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}",
    ):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _wait(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out := predicate():
            return out
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_report_page_shows_a_finished_job_and_filters(
    service_stack: ServiceStack, tiny_checkpoint: Path, browser: WebDriver
) -> None:
    detector = Detector.load(tiny_checkpoint, device="cpu")
    pool = list(range(50_000, 50_300))
    probs = detector.predict(np.stack([np.asarray(Image.open(io.BytesIO(png_bytes(s))).convert("RGB")) for s in pool]))
    fakes = [s for s, p in zip(pool, probs, strict=True) if p >= 0.5][:4]
    reals = [s for s, p in zip(pool, probs, strict=True) if p < 0.5][:6]
    assert fakes and reals
    files = [("files", (f"{s}.png", png_bytes(s), "image/png")) for s in fakes + reals]
    files.append(("files", ("broken.png", b"\x89PNG\r\n\x1a\n broken", "image/png")))
    with service_stack.client() as c:
        r = c.post("/v1/jobs", files=files, data={"explain": "true"})
        assert r.status_code == 202, r.text
        job = service_stack.wait_job(r.json()["id"], timeout=300)
        assert job["state"] == "partially_succeeded" and job["counts"]["explain_pending"] == 0

        # The link a tenant shares: a read-only token for this job, no tenant key in it.
        link = c.post(f"/v1/jobs/{job['id']}/report-link").json()["url"]
    assert "#token=fkr_" in link and service_stack.keys["a"] not in link
    page = httpx.get(link.split("#")[0])
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff" and "<script>" not in page.text
    browser.get(link)
    body = browser.find_element(By.TAG_NAME, "body")
    _wait(lambda: body.get_attribute("data-loaded") == "true", 60, "the page to load the job")
    assert "#token" not in browser.current_url  # the token does not stay in the address bar
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == len(files)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".card.fake")) == len(fakes)
    assert browser.find_element(By.ID, "state").text == "partially_succeeded"
    # Every overlay and image actually loaded from the object store.
    _wait(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"
        ),
        30,
        "images to load",
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "img.overlay")) == len(fakes) + len(reals)
    artifacts = browser.find_elements(By.CSS_SELECTOR, ".card.fake .artifacts li")
    assert len(artifacts) >= len(fakes) and all(":" in li.text for li in artifacts)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-page.png"
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 800

    browser.find_element(By.CSS_SELECTOR, "[data-filter=fake]").click()
    kinds = {c.get_attribute("data-kind") for c in browser.find_elements(By.CSS_SELECTOR, ".card")}
    assert kinds == {"fake"} and len(browser.find_elements(By.CSS_SELECTOR, ".card")) == len(fakes)
    browser.find_element(By.CSS_SELECTOR, "[data-filter=error]").click()
    (err,) = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert "broken.png" in err.text and err.get_attribute("data-kind") == "error"
    browser.save_screenshot(str(ARTIFACTS / "report-page-errors.png"))

    # A reviewer with the link marks a verdict; it lands as the tenant's feedback on that item.
    browser.find_element(By.CSS_SELECTOR, "[data-filter=fake]").click()
    first = browser.find_elements(By.CSS_SELECTOR, ".card")[0]
    first.find_element(By.CSS_SELECTOR, "[data-mark=real]").click()
    _wait(lambda: first.find_element(By.CSS_SELECTOR, ".marked").text == "marked real", 30, "the mark")
    with service_stack.client() as c:
        given = [f for f in c.get("/v1/feedback", params={"limit": 1000}).json()["data"] if f["job_id"] == job["id"]]
    name = first.find_element(By.CSS_SELECTOR, ".name").text
    assert [(f["name"], f["label"], f["verdict"], f["disputed"]) for f in given] == [(name, "real", "fake", True)]
    # The token writes nothing else: not another route, not another job.
    token = link.split("#token=")[1]
    with httpx.Client(base_url=service_stack.api_url, headers={"X-Report-Token": token}) as anon:
        # (refused before the body is read: a token's only write is feedback)
        assert anon.post(f"/v1/jobs/{job['id']}/report-link").status_code == 401
        assert anon.delete(f"/v1/jobs/{job['id']}").status_code == 401
        other = anon.post(f"/v1/jobs/{uuid.uuid4()}/items/0/feedback", json={"label": "real"})
        assert other.status_code == 403 and other.json() == {"detail": "A report token only reads its own job"}

    # Another tenant's key: the API says 404 and the page shows nothing of the job.
    browser.execute_script("sessionStorage.clear()")  # the token too: the key alone must decide
    browser.get("about:blank")  # else a new fragment on the same page is not a new page load
    browser.get(f"{service_stack.api_url}/report/{job['id']}#key={service_stack.keys['b']}")
    body = browser.find_element(By.TAG_NAME, "body")
    _wait(lambda: body.get_attribute("data-error"), 30, "the page to refuse the key")
    assert "not found" in browser.find_element(By.ID, "msg").text
    assert browser.find_elements(By.CSS_SELECTOR, ".card") == []
