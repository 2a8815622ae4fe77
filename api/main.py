"""The FastAPI app: ``uvicorn api.main:app``. Run ``python -m api.prestart`` first (migrations)."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request, Response
from prometheus_client import Counter, Histogram

from api.limits import BodySizeLimit
from api.routes import health, jobs, objects, report, webhooks
from fakescope.settings import get_settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


REQUESTS = Counter("fakescope_api_requests", "API requests by route, method and status.", ["route", "method", "status"])
LATENCY = Histogram(
    "fakescope_api_request_seconds",
    "API request latency by route.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


async def _observe(request: Request, call_next) -> Response:
    t0 = time.perf_counter()
    response = await call_next(request)
    # The route template, not the path: job ids must not become label values.
    route = getattr(request.scope.get("route"), "path", "unmatched")
    if request.url.path.startswith("/v1/") and not route.startswith("/v1"):
        route = "/v1" + route  # routers included under /v1 report their own paths
    LATENCY.labels(route, request.method).observe(time.perf_counter() - t0)
    REQUESTS.labels(route, request.method, str(response.status_code)).inc()
    return response


def create_app() -> FastAPI:
    app = FastAPI(
        title="fakescope",
        version="0.1.0",
        description="Submit image batches, poll for status, read which images are AI-generated and why.",
    )
    app.middleware("http")(_observe)
    app.include_router(health.router)
    app.include_router(jobs.router, prefix="/v1")
    app.include_router(webhooks.router, prefix="/v1")
    app.include_router(objects.router)
    app.include_router(report.router)
    # An oversized body is refused before anything reads it.
    app.add_middleware(BodySizeLimit, max_bytes=get_settings().max_request_bytes)
    return app


app = create_app()
