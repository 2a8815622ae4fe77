"""Liveness, readiness (Postgres, broker, object store) and queue depths for autoscaling."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Response, status
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import EnqueuerDep, SessionDep, SettingsDep, StoreDep
from fakescope.queues import queue_depths
from fakescope.storage import StorageError

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep, store: StoreDep, enqueuer: EnqueuerDep) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        checks["database"] = "ok"
    except SQLAlchemyError as e:
        checks["database"] = f"error: {type(e).__name__}"
    try:
        store.ping()
        checks["storage"] = "ok"
    except StorageError as e:
        checks["storage"] = f"error: {e}"
    try:
        with enqueuer.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except (OSError, BrokerError) as e:
        checks["broker"] = f"error: {type(e).__name__}"
    if any(v != "ok" for v in checks.values()):
        logger.warning("not ready: %s", checks)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=checks)
    return checks


@router.get("/metrics", response_class=Response)
def metrics(settings: SettingsDep, enqueuer: EnqueuerDep) -> Response:
    """Prometheus text: messages waiting per queue (Flower does not export it), for scaling on backlog."""
    from prometheus_client import generate_latest

    lines = [
        "# HELP fakescope_queue_depth Messages waiting in a worker queue.",
        "# TYPE fakescope_queue_depth gauge",
    ]
    for queue, depth in queue_depths(enqueuer.app, [settings.queue_classify, settings.queue_explain]).items():
        lines.append(f'fakescope_queue_depth{{queue="{queue}"}} {depth}')
    # This API process's own request counters and latency histograms follow the queue depths.
    body = "\n".join(lines) + "\n" + generate_latest().decode()
    return Response(body, media_type="text/plain; version=0.0.4")
