"""Fetching an image a caller names by URL, as a worker does (never the API).

A URL is an outsider aiming fakescope's network access: each hop (the URL and every redirect) passes
the outbound guard (:mod:`fakescope.outbound`: public addresses and allowed ports only, https unless
http is allowed) and is connected to at the address that was checked; redirects are capped; connect,
each read and the whole fetch have deadlines; the body is cut off past a byte cap; and what came back
is an image only if its bytes say so (the ``Content-Type`` header is not trusted). Every failure is an
:class:`~fakescope.imageio.ImageError` with a reason that fails that one item.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urljoin

import httpx

from fakescope.imageio import ImageError, sniff_media_type
from fakescope.outbound import OutboundURLError, pinned_url, resolve_target
from fakescope.settings import FetchSettings

__all__ = ["MAX_URL_LENGTH", "fetch_image"]

# Longer URLs are refused before any lookup (and an item's name holds at most 1,024 characters).
MAX_URL_LENGTH = 2048


def fetch_image(url: str, settings: FetchSettings, clock: Callable[[], float] = time.monotonic) -> bytes:
    """The bytes of the image at ``url``, fetched within ``settings``' limits.

    Raises:
        ImageError: the URL is refused, unreachable, answers other than 200, redirects too often,
            is over the byte cap or the deadline, or is not an image; the reason says which.
    """
    if len(url) > MAX_URL_LENGTH:
        raise ImageError(f"url is longer than {MAX_URL_LENGTH} characters")
    deadline = clock() + settings.deadline_s
    schemes = ("http", "https") if settings.allow_http else ("https",)
    timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(settings.max_redirects + 1):
            try:
                target = resolve_target(
                    url, settings.allowed_networks, allowed_ports=settings.allowed_ports, schemes=schemes
                )
                pinned, host, extensions = pinned_url(target)
            except OutboundURLError as e:
                raise ImageError(str(e)) from None
            headers = {**host, "Accept": "image/*", "Accept-Encoding": "identity"}
            request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException:
                raise ImageError(f"url timed out (connect {settings.connect_timeout_s:g} s)") from None
            except httpx.HTTPError as e:
                raise ImageError(f"url could not be fetched: {type(e).__name__}") from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise ImageError(f"url answered HTTP {response.status_code}")
                data = _body(response, settings, deadline, clock)
            finally:
                response.close()
            kind = sniff_media_type(data)
            if not kind.startswith("image/"):
                raise ImageError("url did not return an image (its bytes are no image format fakescope reads)")
            return data
    raise ImageError(f"url redirected more than {settings.max_redirects} times")


def _body(response: httpx.Response, settings: FetchSettings, deadline: float, clock: Callable[[], float]) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_bytes:
        raise ImageError(f"url's image is over the limit of {settings.max_bytes} bytes")
    parts: list[bytes] = []
    size = 0
    try:
        # Raw bytes as they arrive: no decompression (an image is not sent compressed; a gzip bomb is
        # then just bytes that are no image), and a body that trickles is checked at every read.
        for chunk in response.iter_raw():
            size += len(chunk)
            if size > settings.max_bytes:
                raise ImageError(f"url's image is over the limit of {settings.max_bytes} bytes")
            if clock() > deadline:
                raise ImageError(f"url took longer than {settings.deadline_s:g} s to fetch")
            parts.append(chunk)
    except httpx.TimeoutException:
        raise ImageError(f"url stopped sending for {settings.read_timeout_s:g} s") from None
    except httpx.HTTPError as e:
        raise ImageError(f"url could not be fetched: {type(e).__name__}") from None
    return b"".join(parts)
