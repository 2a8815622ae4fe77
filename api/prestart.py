"""Prestart step of the API: migrate the database, create the bucket, register the bootstrap key.

``python -m api.prestart``; compose runs it before the API starts, and so does the stack runner.
"""

from __future__ import annotations

import logging

from sqlmodel import Session

from fakescope.db.engine import get_engine, migrate
from fakescope.service.tenants import ensure_api_key
from fakescope.settings import Settings, get_settings
from fakescope.storage import get_store

logger = logging.getLogger("api.prestart")


def prestart(settings: Settings) -> None:
    migrate(settings.sqlalchemy_url)
    get_store(settings).ensure_bucket()
    if settings.bootstrap_api_key:
        with Session(get_engine(settings.sqlalchemy_url)) as session:
            tenant = ensure_api_key(session, tenant_name="default", key=settings.bootstrap_api_key)
            logger.info("bootstrap API key registered for tenant %s", tenant.name)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    prestart(get_settings())


if __name__ == "__main__":
    main()
