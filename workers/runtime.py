"""What a worker process loads once: settings, the database engine, the object store, the models.

Everything here is built lazily on first use, inside the pool's child process: the prefork parent
never touches CUDA, so each child (one per GPU, pinned with ``CUDA_VISIBLE_DEVICES``) gets a clean
context. Loading happens in the first task, not in ``worker_process_init``, which Celery kills
after a few seconds.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from fakescope.db.engine import get_engine
from fakescope.settings import get_settings
from fakescope.storage import ObjectStore, get_store
from fakescope.tasks import Enqueuer

if TYPE_CHECKING:
    from fakescope.detector import Detector

logger = logging.getLogger(__name__)


def session() -> Session:
    return Session(get_engine(get_settings().sqlalchemy_url))


def reset_db() -> None:
    """Drops pooled connections: one interrupted mid-query (a time limit, a lost server) is unusable."""
    get_engine(get_settings().sqlalchemy_url).dispose()


@cache
def store() -> ObjectStore:
    return get_store(get_settings())


@cache
def enqueuer() -> Enqueuer:
    from workers.celery_app import app

    return Enqueuer(app, get_settings())


@cache
def detector() -> Detector:
    from fakescope.detector import Detector

    det = Detector.load(get_settings().checkpoint or None)
    logger.info("worker loaded detector %s", det.model_version)
    return det


@cache
def explainer() -> Any:
    from fakescope.explain import load_explainer

    return load_explainer(get_settings().explain_backend or None)
