"""Request limits: size caps on request bodies as they arrive (413), the API key before any body
(401), a per-API-key rate limit (429 + Retry-After), and the keyless signed GETs of an item's overlay
and original limited per job (429 + Retry-After) and per process (503 + Retry-After).

The rate limits are counted in Redis when the broker is Redis (so every API replica shares the
count), else in this process (the embedded setup has one): the key's as a moving one-minute window
(the ``limits`` library), a job's signed GETs as a token bucket sized from the job.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import anyio
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session, select

from fakescope.db.engine import get_engine
from fakescope.db.models import Job
from fakescope.service.overlays import image_resource, overlay_resource
from fakescope.settings import Settings
from fakescope.storage import verify_url

__all__ = ["JSON_MAX_BYTES", "BodySizeLimit", "RateLimiter", "SignedGetLimit", "TokenBuckets", "give_back_large_blocks"]

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


# GETs that carry their own authority (a signed URL, checked by the route): an item's overlay and
# original, fetched by a browser's <img> or a plain download with no key.
SIGNED_GETS = re.compile(r"^/v1/jobs/(?P<job>[^/]+)/items/(?P<position>\d+)/(?P<what>overlay\.png|image)$")
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


class TokenBuckets:
    """``take(key, per_minute)``: 0 when a request may go now (and takes a token), else the seconds
    until one may.

    Each key has a bucket of ``per_minute`` tokens, refilled continuously at ``per_minute`` a minute,
    so a burst of a whole minute's worth goes at once and a client that waits Retry-After is never
    refused twice for the same token. In Redis when the broker is Redis (one atomic script on Redis's
    clock, so API replicas draw on one bucket), else in this process on ``clock``.
    """

    # KEYS[1] the bucket; ARGV[1] its size (and refill a minute). Returns the wait in seconds, as text.
    SCRIPT = """
local size = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(held[1]), tonumber(held[2])
if tokens == nil or at == nil then tokens, at = size, now end
tokens = math.min(size, tokens + math.max(0, now - at) * size / 60)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) * 60 / size end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 120)
return tostring(wait)
"""
    # Buckets this process keeps without Redis; a full bucket (idle a minute) is dropped past this.
    MEMORY_KEYS = 10_000

    def __init__(self, broker_url: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis: Redis | None = None
        if broker_url and broker_url.startswith(("redis://", "rediss://")):
            self._redis = Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
            self._script = self._redis.register_script(self.SCRIPT)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, per_minute: float) -> int:
        """Raises:
        redis.exceptions.RedisError: the shared bucket cannot be reached.
        """
        if per_minute <= 0:
            return 0
        if self._redis is not None:
            wait = float(self._script(keys=[f"fakescope-bucket:{key}"], args=[per_minute]))
        else:
            wait = self._take_here(key, per_minute)
        return 0 if wait <= 0 else max(1, math.ceil(wait))

    def _take_here(self, key: str, size: float) -> float:
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(key, (size, now))
            tokens = min(size, tokens + max(0.0, now - at) * size / 60)
            if len(self._buckets) >= self.MEMORY_KEYS:
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) * 60 / size


class SignedGetLimit:
    """ASGI middleware: the keyless GETs of an item's overlay and original (a signed URL each, which
    carries no API key, so no key's rate limit) are limited per job and per process.

    Per job: a token bucket (:class:`TokenBuckets`) of ``signed_gets_per_minute``, or
    ``signed_gets_per_item_per_minute`` times the job's images when that is more. Fetching every overlay
    and original of a job of any size fits in it; replaying one job's links without end does not:
    past it, 429 with Retry-After, the seconds until the next token (``fakescope.client`` waits them).
    Per process: at most ``signed_gets_at_once`` are served at once (each may hold an original, up to
    the 64 MiB image limit, or draw an overlay); the rest wait on the event loop, holding no thread, up
    to ``signed_gets_wait_s``, then get 503 with Retry-After.

    Only a request whose signature checks out is counted: a forged or expired one goes on to its route,
    which refuses it (403) without spending anyone's budget.
    """

    # Job sizes looked up recently: a download asks for each job's size once, not once an image.
    JOB_CACHE = 4096
    JOB_CACHE_S = 60.0

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.buckets = TokenBuckets(settings.broker_url)
        self._slots: anyio.Semaphore | None = None
        self._totals: OrderedDict[uuid.UUID, tuple[int, float]] = OrderedDict()
        self._totals_lock = threading.Lock()

    def _signed_job(self, scope: Scope) -> uuid.UUID | None:
        """The job of a signed GET whose signature is genuine and unexpired; None for anything else."""
        if scope.get("method") not in ("GET", "HEAD"):
            return None
        m = SIGNED_GETS.match(scope.get("path", ""))
        if m is None:
            return None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            job_id, position = uuid.UUID(m["job"]), int(m["position"])
            expires, signature = int(query["expires"][0]), query["signature"][0]
        except (ValueError, KeyError):
            return None
        what = overlay_resource if m["what"] == "overlay.png" else image_resource
        ok = verify_url(self.settings.secret_key, "GET", what(job_id, position), expires, signature)
        return job_id if ok else None

    def _job_total(self, job_id: uuid.UUID) -> int | None:
        now = time.monotonic()
        with self._totals_lock:
            cached = self._totals.get(job_id)
        if cached is not None and now - cached[1] < self.JOB_CACHE_S:
            return cached[0]
        with Session(get_engine(self.settings.sqlalchemy_url)) as session:
            total = session.exec(select(Job.total).where(Job.id == job_id)).first()
        if total is None:
            return None
        with self._totals_lock:
            self._totals[job_id] = (total, now)
            self._totals.move_to_end(job_id)
            while len(self._totals) > self.JOB_CACHE:
                self._totals.popitem(last=False)
        return total

    def per_minute(self, total: int) -> float:
        """The size of a job's bucket: the base, or its images' share when that is more."""
        return max(float(self.settings.signed_gets_per_minute), self.settings.signed_gets_per_item_per_minute * total)

    def _take(self, job_id: uuid.UUID) -> tuple[int, float] | None:
        """``(retry_after, bucket size)`` for one signed GET of ``job_id``; None: no such job."""
        if self.settings.signed_gets_per_minute <= 0:
            return 0, 0.0
        total = self._job_total(job_id)
        if total is None:
            return None
        size = self.per_minute(total)
        try:
            return self.buckets.take(f"job:{job_id}", size), size
        except RedisError as e:  # the bucket's store is down: serve rather than fail every download
            logger.warning("signed GET limiter unavailable, not limiting: %s", e)
            return 0, size

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        job_id = self._signed_job(scope) if scope["type"] == "http" else None
        if job_id is None:
            await self.app(scope, receive, send)
            return
        try:
            taken = await anyio.to_thread.run_sync(self._take, job_id)
        except (OperationalError, InterfaceError, PoolTimeout):
            await _refuse(scope, send, 503, "the database is unavailable or busy; retry shortly", retry_after=5)
            return
        if taken is not None and taken[0]:
            detail = f"Rate limit of {taken[1]:.0f} requests a minute for this job's signed URLs"
            await _refuse(scope, send, 429, detail, retry_after=taken[0])
            return
        if self._slots is None:
            self._slots = anyio.Semaphore(self.settings.signed_gets_at_once)
        admitted = False
        with anyio.move_on_after(self.settings.signed_gets_wait_s):
            await self._slots.acquire()
            admitted = True
        if not admitted:
            await _refuse(scope, send, 503, "Too many downloads in progress; retry shortly", retry_after=1)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()


class _RouteLabel(NamedTuple):
    """What the request metrics (``api.main._observe``) read of ``scope["route"]``: its template."""

    path: str


async def _refuse(scope: Scope, send: Any, status: int, detail: str, retry_after: int) -> None:
    # Answered before the router runs: labelled with the route it would have matched, not as unmatched.
    what = SIGNED_GETS.match(scope["path"])
    scope["route"] = _RouteLabel(f"/v1/jobs/{{job_id}}/items/{{position}}/{what['what'] if what else ''}")
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# glibc's malloc serves a block from the arena of the thread that asks for it, and raises its mmap
# threshold each time a mapped block is freed (up to 32 MiB), so later large blocks come from arenas
# too: a decode freed on one threadpool thread stays in that thread's arena. Overlay draws taken one at
# a time on eight threads left a process 950 MB larger (one 36-megapixel draw per thread); with a fixed
# threshold every block over it is its own mapping, given back to the system when freed.
MMAP_THRESHOLD_BYTES = 4 * 1024**2
_M_MMAP_THRESHOLD = -3  # malloc.h


def give_back_large_blocks() -> bool:
    """Makes this process's allocator return blocks over :data:`MMAP_THRESHOLD_BYTES` to the system as
    soon as they are freed (glibc; elsewhere nothing changes). Returns whether it did."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: its allocator has no such knob to set
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
