"""The key gate: a request that carries a body is authenticated, and counted against its key's rate
limit, before the first byte of that body is received.

FastAPI resolves a route's dependencies (the key check among them) only after it has parsed the body
the route declares: a made-up key could make the API spool a 300 MiB upload to disk, or parse four
15 MiB JSON documents, before hearing 401. This ASGI middleware runs first: the key's hash is looked
up and its rate limit hit, and a bad or throttled key is answered at once, the body never read. The
route's own dependency then takes the tenant the gate found, without counting the request twice.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import GATED_TENANT, check_key
from fakescope.settings import get_settings

__all__ = ["KeyGate"]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def _answer(send: Send, code: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": code, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class KeyGate:
    """ASGI middleware: ``/v1/`` requests with a body and an ``X-API-Key`` are let in only with a valid,
    unthrottled key (requests without a key are refused by :class:`api.limits.BodySizeLimit`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in BODY_METHODS or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        key = dict(scope.get("headers") or []).get(b"x-api-key")
        if not key:
            await self.app(scope, receive, send)
            return
        # A sync database look-up and a Redis round trip: off the event loop.
        try:
            tenant, retry_after = await anyio.to_thread.run_sync(check_key, scope["app"], key.decode("latin-1"))
        except (OperationalError, InterfaceError, PoolTimeout):
            # As the app answers when its database is down: the client's cue to retry.
            await _answer(send, 503, "the database is unavailable or busy; retry shortly", {"Retry-After": "5"})
            return
        if tenant is None:
            await _answer(send, 401, "Invalid API key")
            return
        if retry_after:
            settings = get_settings()
            detail = f"Rate limit of {settings.rate_limit_per_minute} requests a minute for this key"
            await _answer(send, 429, detail, {"Retry-After": str(retry_after)})
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state[GATED_TENANT] = tenant
        await self.app(scope, receive, send)
