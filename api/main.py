"""The FastAPI app: ``uvicorn api.main:app``. Run ``python -m api.prestart`` first (migrations)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from prometheus_client import Counter, Histogram
from sqlalchemy.exc import InterfaceError as DBInterfaceError
from sqlalchemy.exc import OperationalError as DBOperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.deps import app_services
from api.gate import KeyGate
from api.limits import BodySizeLimit, SignedGetLimit, give_back_large_blocks
from api.routes import detect, feedback, health, jobs, models, objects, operating_point, report, webhooks
from fakescope.service.budget import UploadBusy
from fakescope.service.overlays import OverlayBusy
from fakescope.service.uploads import IdempotencyConflict
from fakescope.settings import get_settings
from fakescope.storage import StorageError

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


REQUESTS = Counter("fakescope_api_requests", "API requests by route, method and status.", ["route", "method", "status"])
LATENCY = Histogram(
    "fakescope_api_request_seconds",
    "API request latency by route.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    t0 = time.perf_counter()
    response = await call_next(request)
    # The route template, not the path: job ids must not become label values.
    route = getattr(request.scope.get("route"), "path", "unmatched")
    if request.url.path.startswith("/v1/") and not route.startswith("/v1"):
        route = "/v1" + route  # routers included under /v1 report their own paths
    # Label values from fixed sets only: a client can send any method name, and each would be a series.
    method = request.method if request.method in HTTP_METHODS else "OTHER"
    LATENCY.labels(route, method).observe(time.perf_counter() - t0)
    REQUESTS.labels(route, method, str(response.status_code)).inc()
    return response


def _unavailable(what: str) -> Callable[[Request, Exception], Response]:
    def handler(request: Request, exc: Exception) -> Response:
        # A dependency that is down or saturated is the client's cue to retry, not a server bug.
        logging.getLogger("api").warning("%s %s: %s unavailable: %s", request.method, request.url.path, what, exc)
        return JSONResponse(
            {"detail": f"{what} is unavailable or busy; retry shortly"}, status_code=503, headers={"Retry-After": "5"}
        )

    return handler


def _busy(request: Request, exc: Exception) -> Response:
    logging.getLogger("api").warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "Too many uploads in progress; retry shortly"}, status_code=503, headers={"Retry-After": "5"}
    )


def _drawing_busy(request: Request, exc: Exception) -> Response:
    logging.getLogger("api").warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "Too many overlays being drawn; retry shortly"}, status_code=503, headers={"Retry-After": "5"}
    )


def _unprocessable(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=422)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The process's clients, built once: the object store, the enqueuer, the rate limiter and the one
    # byte budget every upload request of this process shares (they run on the threadpool).
    app_services(app)
    # Uploads and overlay draws hold large blocks on many threads: freed, they go back to the system.
    give_back_large_blocks()
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        lifespan=_lifespan,
        title="fakescope",
        version="0.1.0",
        description="Submit image batches, poll for status, read which images are AI-generated and why.",
    )
    settings = get_settings()
    # Innermost, inside the metrics: a job's signed GETs are counted per job and per process (api.limits).
    app.add_middleware(SignedGetLimit, settings=settings)
    app.middleware("http")(_observe)
    for db_down in (DBOperationalError, DBInterfaceError, PoolTimeout):  # not integrity errors: those are bugs
        app.add_exception_handler(db_down, _unavailable("the database"))
    app.add_exception_handler(StorageError, _unavailable("object storage"))
    app.add_exception_handler(BrokerError, _unavailable("the queue broker"))
    app.add_exception_handler(IdempotencyConflict, _unprocessable)
    app.add_exception_handler(UploadBusy, _busy)
    app.add_exception_handler(OverlayBusy, _drawing_busy)
    app.include_router(health.router)
    app.include_router(jobs.router, prefix="/v1")
    app.include_router(detect.router, prefix="/v1")
    app.include_router(feedback.router, prefix="/v1")
    app.include_router(operating_point.router, prefix="/v1")
    app.include_router(webhooks.router, prefix="/v1")
    app.include_router(models.router, prefix="/v1")
    app.include_router(objects.router)
    app.include_router(report.router)
    # An oversized body is refused as it arrives, an anonymous one before anything reads it.
    # Inner: a key is checked, and its rate limit counted, before any body byte is received (api.gate).
    app.add_middleware(KeyGate)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes, json_max_bytes=settings.max_json_bytes)
    return app


app = create_app()
