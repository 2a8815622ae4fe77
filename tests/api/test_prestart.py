"""``python -m api.prestart --wait``: what every Kubernetes pod runs before it starts (deploy/k8s)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from api.prestart import wait_for_schema
from fakescope.db.engine import get_engine, migrate, schema_is_ready
from fakescope.settings import Settings


class Ticks(Exception):
    """Stands for the clock running out: the wait would have slept again."""


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, broker_url=None, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")


def _sleep_until(limit: int, calls: list[float]) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) >= limit:
            raise Ticks

    return sleep


def test_pods_wait_for_the_migration_and_start_once_it_ran(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    url = settings.sqlalchemy_url
    assert not schema_is_ready(url)  # an empty database: the migration Job has not run
    slept: list[float] = []
    with pytest.raises(Ticks):
        wait_for_schema(settings, every_s=5, sleep=_sleep_until(3, slept))
    assert slept == [5, 5, 5]

    migrate(url)
    assert schema_is_ready(url)
    slept.clear()
    wait_for_schema(settings, sleep=_sleep_until(1, slept))
    assert slept == []


def test_an_older_schema_waits_and_a_newer_one_does_not(tmp_path: Path) -> None:
    url = _settings(tmp_path).sqlalchemy_url
    migrate(url)
    with get_engine(url).begin() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        # A revision this code does not know: the next version's migration ran (mid-rollout).
        conn.execute(text("UPDATE alembic_version SET version_num = 'from_the_next_version'"))
    assert schema_is_ready(url)
    with get_engine(url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    assert head != "0001"
    assert not schema_is_ready(url)
