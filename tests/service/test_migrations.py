"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import fakescope.db.models  # noqa: F401  (registers the tables)
from fakescope.db.engine import get_engine
from tests.utils.stack import ServiceEnv


def test_migrated_database_matches_the_models(service_env: ServiceEnv) -> None:
    # service_env ran the production prestart step (alembic upgrade head) on a fresh database.
    with get_engine(service_env.settings.sqlalchemy_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
