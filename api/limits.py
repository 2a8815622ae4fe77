"""Request limits: size caps on request bodies as they arrive (413), the API key before any body
(401), and a per-API-key rate limit (429 + Retry-After).

The rate limit is a moving one-minute window (the ``limits`` library) counted in Redis when the broker
is Redis (so every API replica shares the count), else in this process (the embedded setup has one).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fakescope.settings import Settings

__all__ = ["JSON_MAX_BYTES", "BodySizeLimit", "RateLimiter"]

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


# GETs that carry their own authority (a signed URL, checked by the route): an item's overlay and
# original, fetched by a browser's <img> or a plain download with no key.
SIGNED_GETS = re.compile(r"^/v1/jobs/[^/]+/items/\d+/(overlay\.png|image)$")
# The one write a report token may make: feedback on an item of its own job (api.deps checks the job).
REPORT_MARKS = re.compile(r"^/v1/jobs/[0-9a-fA-F-]{36}/items/[0-9]+/feedback$")

# Routes whose bodies are image uploads; every other body is a small JSON document.
UPLOAD_ROUTES = (("POST", "/v1/jobs"), ("PUT", "/objects/"))
JSON_MAX_BYTES = 16 * 1024 * 1024


def _json_response(status: int, detail: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"detail": detail}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
    }
    return start, {"type": "http.response.body", "body": body}


class BodySizeLimit:
    """ASGI middleware: request bodies are counted as they arrive and cut off at the route's limit.

    Upload routes may send ``max_bytes``; every other route ``json_max_bytes``. A Content-Length over
    the limit gets 413 before anything is read; a chunked body (no Content-Length) gets 413 the moment
    its running count passes the limit, so nothing ever holds more than the limit of one request.
    ``/v1/`` requests without an ``X-API-Key`` header get 401 before their body is read: an anonymous
    client cannot make the API parse anything (a report token's GETs and the signed GETs of an item's
    overlay and original have no body, and their routes check their own authority).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, json_max_bytes: int = JSON_MAX_BYTES) -> None:
        self.app, self.max_bytes, self.json_max_bytes = app, max_bytes, json_max_bytes

    def _limit(self, method: str, path: str) -> int:
        for m, prefix in UPLOAD_ROUTES:
            if method == m and (path == prefix or (prefix.endswith("/") and path.startswith(prefix))):
                return self.max_bytes
        return self.json_max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path, method = scope.get("path", ""), scope.get("method", "GET")
        # A report token (one job) reads, and marks an item with a small JSON body (the JSON limit
        # below); the route checks the token before it parses anything.
        token = headers.get(b"x-report-token")
        reads = method in ("GET", "HEAD") and (token or SIGNED_GETS.match(path))
        marks = method == "POST" and token and REPORT_MARKS.match(path)
        if path.startswith("/v1/") and not headers.get(b"x-api-key") and not (reads or marks):
            for message in _json_response(401, "Missing API key"):
                await send(message)
            return
        limit = self._limit(method, path)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            for message in _json_response(413, f"Request body over the limit of {limit} bytes"):
                await send(message)
            return
        seen = 0
        refused = False

        async def counted_receive() -> dict[str, Any]:
            # Past the limit the 413 goes out at once and the app is told the client left: FastAPI
            # turns an exception raised here into its own 400, and must not read any further.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = dict(await receive())
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    for out in _json_response(413, f"Request body over the limit of {limit} bytes"):
                        await send(out)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not refused:  # whatever the app answers after a 413 has nowhere to go
                await send(message)

        await self.app(scope, counted_receive, guarded_send)


class RateLimiter:
    """``hit(key)`` counts a request; returns 0 when allowed, else the seconds until it would be.

    A moving one-minute window per key (the ``limits`` library), counted in Redis when the broker is
    Redis (so API replicas share the count), in memory otherwise. A moving window has no boundary to
    burst across: at most ``rate_limit_per_minute`` requests in any 60 seconds.
    """

    WINDOW_S = 60

    def __init__(self, settings: Settings) -> None:
        from limits import RateLimitItemPerMinute, storage, strategies

        self.limit = settings.rate_limit_per_minute
        redis_broker = bool(settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")))
        uri = settings.broker_url if redis_broker and settings.broker_url else "memory://"
        self._storage = storage.storage_from_string(uri, socket_timeout=2) if redis_broker else storage.MemoryStorage()
        self._strategy = strategies.MovingWindowRateLimiter(self._storage)
        self._item = RateLimitItemPerMinute(max(1, self.limit), namespace="fakescope-ratelimit")

    def hit(self, key: str) -> int:
        if self.limit <= 0:
            return 0
        if self._strategy.hit(self._item, key):
            return 0
        reset = self._strategy.get_window_stats(self._item, key).reset_time
        return max(1, min(self.WINDOW_S, math.ceil(reset - time.time())))
