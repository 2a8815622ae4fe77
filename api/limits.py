"""Request limits: a size cap on request bodies (413) and a per-API-key rate limit (429 + Retry-After).

The rate limit is a fixed one-minute window counted in Redis when the broker is Redis (so every API
replica shares the count), else in this process (the embedded setup has one API process).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fakescope.settings import Settings

__all__ = ["BodySizeLimit", "RateLimiter"]

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class BodySizeLimit:
    """ASGI middleware: a request whose Content-Length exceeds ``max_bytes`` gets 413 before its body is read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                body = json.dumps({"detail": f"Request body over the limit of {self.max_bytes} bytes"}).encode()
                await send({
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                })  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class RateLimiter:
    """``hit(key)`` counts a request; returns 0 when allowed, else the seconds until the window resets."""

    WINDOW_S = 60

    def __init__(self, settings: Settings) -> None:
        self.limit = settings.rate_limit_per_minute
        self._redis = None
        if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
            import redis

            self._redis = redis.Redis.from_url(settings.broker_url, socket_timeout=2)
        self._local: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> int:
        if self.limit <= 0:
            return 0
        now = int(time.time())
        window = now // self.WINDOW_S
        retry_after = (window + 1) * self.WINDOW_S - now
        if self._redis is not None:
            name = f"fakescope:ratelimit:{key}:{window}"
            pipe = self._redis.pipeline()
            pipe.incr(name)
            pipe.expire(name, self.WINDOW_S + 5)
            count = int(pipe.execute()[0])
        else:
            with self._lock:
                w, c = self._local.get(key, (window, 0))
                count = c + 1 if w == window else 1
                self._local[key] = (window, count)
        return retry_after if count > self.limit else 0
