"""The workers' Celery app: ``celery -A workers.celery_app worker -Q classify`` (or ``-Q explain``)."""

from __future__ import annotations

from fakescope.settings import get_settings
from fakescope.tasks import make_celery

app = make_celery(get_settings(), include=["workers.classify", "workers.explain"])
