"""Dependencies of the routes, as ``Annotated`` aliases so route signatures stay short."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError as DBInterfaceError
from sqlalchemy.exc import OperationalError as DBOperationalError
from sqlmodel import Session

from api.limits import RateLimiter
from fakescope.db.engine import get_engine
from fakescope.db.models import Job
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
    session = Session(get_engine(settings.sqlalchemy_url))
    try:
        yield session
    finally:
        try:
            session.close()
        except (DBOperationalError, DBInterfaceError) as e:
            # The server went away after the route ran: closing runs after the response has started, so
            # raising here would drop the client's connection. SQLAlchemy has invalidated the connection.
            logging.getLogger(__name__).warning("database connection lost while closing a session: %s", e)


# One client per settings object (the process has one, unless a test overrides get_settings).
_stores: dict[int, ObjectStore] = {}
logger = logging.getLogger(__name__)

_enqueuers: dict[int, Enqueuer] = {}


def get_object_store(settings: SettingsDep) -> ObjectStore:
    if id(settings) not in _stores:
        _stores[id(settings)] = get_store(settings)
    return _stores[id(settings)]


def get_enqueuer(settings: SettingsDep) -> Enqueuer:
    if id(settings) not in _enqueuers:
        _enqueuers[id(settings)] = Enqueuer(make_celery(settings), settings)
    return _enqueuers[id(settings)]


SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ObjectStore, Depends(get_object_store)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]


_limiters: dict[int, RateLimiter] = {}


def get_tenant(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: Annotated[str | None, Security(api_key_header)],
    report_token: Annotated[str | None, Security(report_token_header)],
) -> uuid.UUID:
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
    if id(settings) not in _limiters:  # one limiter (and Redis client) per process, as for the enqueuer
        _limiters[id(settings)] = RateLimiter(settings)
    try:
        retry_after = _limiters[id(settings)].hit(hash_key(key))
    except RedisError as e:  # the limiter's store is down: serve rather than fail every request
        logger.warning("rate limiter unavailable, not limiting: %s", e)
        retry_after = 0
    if retry_after:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"Rate limit of {settings.rate_limit_per_minute} requests a minute for this key",
            headers={"Retry-After": str(retry_after)},
        )
    return tenant_id


def _report_reader(request: Request, session: Session, settings: Settings, token: str) -> uuid.UUID:
    """The tenant of a report token's job, if the request only reads that job and the token is valid."""
    job_id = report_token_job(token)
    job = session.get(Job, job_id) if job_id is not None else None
    if job is None or not verify_report_token(settings.secret_key, token, tenant_id=job.tenant_id, now=time.time()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="Invalid or expired report token")
    if request.method not in ("GET", "HEAD") or str(request.path_params.get("job_id", "")) != str(job_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="A report token only reads its own job")
    return job.tenant_id


TenantDep = Annotated[uuid.UUID, Depends(get_tenant)]
