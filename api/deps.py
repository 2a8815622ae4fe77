"""Dependencies of the routes, as ``Annotated`` aliases so route signatures stay short."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security, status
from fastapi.security import APIKeyHeader
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError as DBInterfaceError
from sqlalchemy.exc import OperationalError as DBOperationalError
from sqlmodel import Session

from api.limits import REPORT_MARKS, RateLimiter
from fakescope.db.engine import new_session
from fakescope.db.models import Job
from fakescope.service.budget import ByteBudget
from fakescope.service.tenants import authenticate, hash_key, report_token_job, verify_report_token
from fakescope.settings import Settings, get_settings
from fakescope.storage import ObjectStore, get_store
from fakescope.tasks import Enqueuer, make_celery

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="A tenant's API key.")
report_token_header = APIKeyHeader(
    name="X-Report-Token",
    auto_error=False,
    description="A report link's read-only token: the GET routes of its one job, until it expires.",
)

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = new_session(settings.sqlalchemy_url)
    try:
        yield session
    finally:
        try:
            session.close()
        except (DBOperationalError, DBInterfaceError) as e:
            # The server went away after the route ran: closing runs after the response has started, so
            # raising here would drop the client's connection. SQLAlchemy has invalidated the connection.
            logging.getLogger(__name__).warning("database connection lost while closing a session: %s", e)


logger = logging.getLogger(__name__)


@dataclass
class Services:
    """The process's long-lived clients, built once when the app starts (``api.main``'s lifespan):
    the object store, the broker's enqueuer, the rate limiter and the upload byte budget."""

    store: ObjectStore
    enqueuer: Enqueuer
    limiter: RateLimiter
    upload_budget: ByteBudget

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(
            store=get_store(settings),
            enqueuer=Enqueuer(make_celery(settings), settings),
            limiter=RateLimiter(settings),
            upload_budget=ByteBudget(settings.upload_memory_bytes, settings.upload_memory_wait_s),
        )


def app_services(app: FastAPI) -> Services:
    """The app's services: built by its lifespan, or here on first use by an app driven without one."""
    found: Services | None = getattr(app.state, "services", None)
    if found is None:
        found = app.state.services = Services.build(get_settings())
    return found


def services(request: Request) -> Services:
    return app_services(request.app)


ServicesDep = Annotated[Services, Depends(services)]


def get_object_store(svc: ServicesDep) -> ObjectStore:
    return svc.store


def get_enqueuer(svc: ServicesDep) -> Enqueuer:
    return svc.enqueuer


SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ObjectStore, Depends(get_object_store)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]


# Set by api.gate.KeyGate on the request's state when it already checked the key (and counted the
# request against its rate limit) before the body was received.
GATED_TENANT = "gated_tenant"


def check_key(app: FastAPI, key: str) -> tuple[uuid.UUID | None, int]:
    """``(tenant, retry_after)`` of an API key: the tenant None when the key is unknown or revoked,
    ``retry_after`` the seconds until its rate limit allows it (0: allowed; the request is counted)."""
    with new_session(get_settings().sqlalchemy_url) as session:
        tenant = authenticate(session, key=key)
    if tenant is None:
        return None, 0
    try:
        return tenant, app_services(app).limiter.hit(hash_key(key))
    except RedisError as e:  # the limiter's store is down: serve rather than fail every request
        logger.warning("rate limiter unavailable, not limiting: %s", e)
        return tenant, 0


def rate_limited(settings: Settings, retry_after: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=f"Rate limit of {settings.rate_limit_per_minute} requests a minute for this key",
        headers={"Retry-After": str(retry_after)},
    )


def get_tenant(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: Annotated[str | None, Security(api_key_header)],
    report_token: Annotated[str | None, Security(report_token_header)],
) -> uuid.UUID:
    gated: uuid.UUID | None = getattr(request.state, GATED_TENANT, None)
    if gated is not None:
        return gated  # checked and counted before the body was read (api.gate)
    if not key and report_token:
        tenant_id = _report_reader(request, session, settings, report_token)
        key = report_token  # rate-limited like a key of its own
    else:
        if not key:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="Missing API key")
        found = authenticate(session, key=key)
        if found is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="Invalid API key")
        tenant_id = found
    try:
        retry_after = services(request).limiter.hit(hash_key(key))
    except RedisError as e:  # the limiter's store is down: serve rather than fail every request
        logger.warning("rate limiter unavailable, not limiting: %s", e)
        retry_after = 0
    if retry_after:
        raise rate_limited(settings, retry_after)
    return tenant_id


def _report_reader(request: Request, session: Session, settings: Settings, token: str) -> uuid.UUID:
    """The tenant of a report token's job, if the request only reads that job (or marks one of its
    items real or fake: :data:`api.limits.REPORT_MARKS`) and the token is valid."""
    job_id = report_token_job(token)
    job = session.get(Job, job_id) if job_id is not None else None
    if job is None or not verify_report_token(settings.secret_key, token, tenant_id=job.tenant_id, now=time.time()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="Invalid or expired report token")
    marks = request.method == "POST" and REPORT_MARKS.match(request.url.path) is not None
    allowed = request.method in ("GET", "HEAD") or marks
    if not allowed or str(request.path_params.get("job_id", "")) != str(job_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="A report token only reads its own job")
    if request.url.path.endswith("/deliveries"):
        # The webhook delivery log (the tenant's receiver, its answers) is the tenant's, not the report's.
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="A report token does not read webhook deliveries")
    request.state.report_token = True
    return job.tenant_id


TenantDep = Annotated[uuid.UUID, Depends(get_tenant)]

# Pages and items. Past any real count, and inside Postgres' bigint: a larger OFFSET is a database
# error, not an empty page.
MAX_OFFSET = 2**31 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Limit = Annotated[int, Query(ge=1, le=1000)]
ItemPosition = Annotated[int, Path(ge=0, le=MAX_OFFSET)]
