"""The workers' Celery app: ``celery -A workers.celery_app worker -Q classify`` (or ``-Q explain``, ``-Q webhooks``).

Each pool child serves Prometheus metrics on ``FAKESCOPE_METRICS_PORT`` (one port per worker process,
``-c 1``) and logs one JSON object a line when ``FAKESCOPE_LOG_FORMAT=json`` (the default).
"""

from __future__ import annotations

import logging

from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init

from fakescope.observability import JsonFormatter, set_pool
from fakescope.settings import get_settings
from fakescope.tasks import make_celery

logger = logging.getLogger(__name__)

app = make_celery(get_settings(), include=["workers.classify", "workers.explain", "workers.webhooks", "workers.train"])
# Celery's consumer, with a heartbeat that cannot stall the event loop while the broker is away.
app.conf.worker_consumer = "workers.consumer:Consumer"
set_pool(get_settings().worker_pool)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _json_logs(logger: logging.Logger, **_: object) -> None:
    if get_settings().log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())


@worker_process_init.connect
def _metrics_server(**_: object) -> None:
    port = get_settings().metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=get_settings().metrics_host)
        logger.info("metrics on :%s/metrics", port)
