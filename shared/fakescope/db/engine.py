"""One SQLAlchemy engine per process and database URL, the one way sessions are made on it, and the
migrations (run from here, never at import)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session, create_engine

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["MIGRATIONS_DIR", "get_engine", "migrate", "new_session", "schema_is_ready"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """The engine for ``url``; built lazily, so a forked worker child opens its own connections."""
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        # Several processes share the file in the embedded setup: wait for locks instead of failing.
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # Each API request holds a connection for its whole duration (an upload can take a while), so the
    # pool is sized for concurrent clients; a request that still finds none waits pool_timeout, then
    # the API answers 503 with Retry-After.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=15)


def new_session(url: str) -> Session:
    """A session on ``url``'s engine: the only place the service makes one.

    ``expire_on_commit=False``: a commit leaves the objects in hand as they are, so reading a job or
    an item after committing costs no reload query. Every unit of work is short (a request, a task, a
    sweep) and reads what changed under it by querying, or by ``session.refresh`` where it needs an
    object that another process or a Core statement changed (see :mod:`fakescope.service`).
    """
    return Session(get_engine(url), expire_on_commit=False)


def _alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Upgrades the schema at ``url`` to ``revision`` with Alembic (the prestart step)."""
    from alembic import command

    _ensure_sqlite_dir(url)
    command.upgrade(_alembic_config(url), revision)


def schema_is_ready(url: str) -> bool:
    """Whether the database at ``url`` stands at the head revision this code ships, or past it: what a pod
    waits for before it starts. A new version's pods wait for that version's migration Job; a pod of the
    previous version that restarts mid-rollout finds a revision it does not know (a newer one, which
    migrations keep compatible with the version before) and starts."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(url))
    with get_engine(url).connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current == set(script.get_heads()):
        return True
    known = {rev.revision for rev in script.walk_revisions()}
    return bool(current) and not current & known
