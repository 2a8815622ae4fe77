"""Fetching image URLs: what a hostile or broken host can do, each refused with its own reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fakescope.fetch import fetch_image
from fakescope.imageio import ImageError
from fakescope.settings import FetchSettings
from tests.utils.image_server import IMAGES, image_server

LOOPBACK = FetchSettings(
    allow_http=True, allowed_networks=["127.0.0.1/32"], deadline_s=1.5, read_timeout_s=1.0, max_bytes=1024**2
)
NON_PUBLIC = "url points at a non-public address ({}); not allowed"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with image_server() as url:
        yield url


def test_an_image_and_a_redirect_to_one_are_fetched(base: str) -> None:
    assert fetch_image(f"{base}/img/0.png", LOOPBACK) == IMAGES["/img/0.png"]
    assert fetch_image(f"{base}/redirect", LOOPBACK) == IMAGES["/img/0.png"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/to-metadata", NON_PUBLIC.format("169.254.169.254")),
        ("/redirect-loop", "url redirected more than 3 times"),
        ("/endless", f"url's image is over the limit of {1024**2} bytes"),
        ("/slow", "url took longer than 1.5 s to fetch"),
        ("/text", "url did not return an image (its bytes are no image format fakescope reads)"),
        ("/missing", "url answered HTTP 404"),
    ],
)
def test_what_a_host_sends_back_is_refused_with_its_reason(base: str, path: str, reason: str) -> None:
    with pytest.raises(ImageError) as e:
        fetch_image(base + path, LOOPBACK)
    assert str(e.value) == reason


@pytest.mark.parametrize(
    ("url", "settings", "reason"),
    [
        ("http://10.0.0.7/a.png", LOOPBACK, NON_PUBLIC.format("10.0.0.7")),
        ("http://[::ffff:127.0.0.2]/a.png", LOOPBACK, NON_PUBLIC.format("::ffff:7f00:2")),
        ("http://169.254.169.254/latest/", LOOPBACK, NON_PUBLIC.format("169.254.169.254")),
        ("http://127.0.0.1:1/a.png", FetchSettings(allow_http=True), NON_PUBLIC.format("127.0.0.1")),
        ("http://example.com/a.png", FetchSettings(), "url must be an https URL"),
        ("ftp://example.com/a.png", LOOPBACK, "url must be an http or https URL"),
        ("https://user:pw@example.com/a.png", FetchSettings(), "url must not carry credentials"),
        ("https://8.8.8.8:22/a.png", FetchSettings(), "url port 22 is not allowed (allowed: 80, 443)"),
        ("https://" + "a" * 3000 + ".com/", FetchSettings(), "url is longer than 2048 characters"),
    ],
)  # fmt: skip
def test_urls_the_guard_refuses_before_connecting(url: str, settings: FetchSettings, reason: str) -> None:
    with pytest.raises(ImageError) as e:
        fetch_image(url, settings)
    assert str(e.value) == reason
