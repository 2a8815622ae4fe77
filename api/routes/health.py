"""Liveness, readiness (Postgres, broker, object store) and queue depths for autoscaling."""

from __future__ import annotations

import hmac
import ipaddress
import logging

from fastapi import APIRouter, HTTPException, Request, Response, status
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import EnqueuerDep, SessionDep, SettingsDep, StoreDep
from fakescope.queues import queue_depths
from fakescope.settings import Settings
from fakescope.storage import StorageError

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def internal(request: Request, settings: Settings) -> bool:
    """Whether ``request`` may see internals: it carries ``FAKESCOPE_INTERNAL_TOKEN`` as a bearer token,
    or, with no token configured, it comes from loopback (a sidecar or the host's own Prometheus)."""
    if settings.internal_token:
        return hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {settings.internal_token}")
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


@router.get("/readyz")
def readyz(
    request: Request, session: SessionDep, store: StoreDep, enqueuer: EnqueuerDep, settings: SettingsDep
) -> dict[str, str]:
    """Ready when Postgres, the object store and the broker answer. Which one failed, and how, is
    internal (``internal``): everyone else gets the verdict alone."""
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
    detailed = internal(request, settings)
    if any(v != "ok" for v in checks.values()):
        logger.warning("not ready: %s", checks)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=checks if detailed else "not ready")
    return checks if detailed else {"status": "ready"}


@router.get("/metrics", response_class=Response)
def metrics(request: Request, settings: SettingsDep, enqueuer: EnqueuerDep) -> Response:
    """Prometheus text: messages waiting per queue (Flower does not export it), for scaling on backlog.

    Internal: a bearer ``FAKESCOPE_INTERNAL_TOKEN``, or a loopback client when none is set.
    """
    from prometheus_client import generate_latest

    if not internal(request, settings):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="metrics are internal: send Authorization: Bearer <internal token>"
        )
    lines = [
        "# HELP fakescope_queue_depth Messages waiting in a worker queue.",
        "# TYPE fakescope_queue_depth gauge",
    ]
    queues = [settings.queue_classify, settings.queue_explain, settings.queue_webhooks]
    for queue, depth in queue_depths(enqueuer.app, queues).items():
        lines.append(f'fakescope_queue_depth{{queue="{queue}"}} {depth}')
    # This API process's own request counters and latency histograms follow the queue depths.
    body = "\n".join(lines) + "\n" + generate_latest().decode()
    return Response(body, media_type="text/plain; version=0.0.4")
