"""Prestart step of the API: migrate the database, create the bucket, register the bootstrap key.

``python -m api.prestart``; compose runs it before the API starts, and so does the stack runner. On
Kubernetes it is the migration Job, and every API and worker pod first runs
``python -m api.prestart --wait``, which returns once the schema is at this code's head revision.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from fakescope.db.engine import migrate, new_session, schema_is_ready
from fakescope.polling import poll
from fakescope.service.tenants import ensure_api_key
from fakescope.settings import Settings, get_settings
from fakescope.storage import get_store

logger = logging.getLogger("api.prestart")


def prestart(settings: Settings) -> None:
    migrate(settings.sqlalchemy_url)
    get_store(settings).ensure_bucket()
    if settings.bootstrap_api_key:
        with new_session(settings.sqlalchemy_url) as session:
            tenant = ensure_api_key(session, tenant_name="default", key=settings.bootstrap_api_key)
            logger.info("bootstrap API key registered for tenant %s", tenant.name)


def wait_for_schema(settings: Settings, every_s: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """Returns once the database's schema is the one this code needs; another process migrates it."""

    def ready() -> bool | None:
        try:
            if schema_is_ready(settings.sqlalchemy_url):
                return True
            logger.info("schema older than this version's; waiting for the migration Job")
        except SQLAlchemyError as e:
            logger.info("database not reachable yet (%s); waiting", type(e).__name__)
        return None

    poll(ready, waits=[every_s], sleep=sleep)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m api.prestart", description=__doc__.splitlines()[0])
    p.add_argument("--wait", action="store_true", help="migrate nothing: wait until the schema is current")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    if args.wait:
        wait_for_schema(get_settings())
    else:
        prestart(get_settings())


if __name__ == "__main__":
    main()
