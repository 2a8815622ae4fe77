"""Metrics and structured logs of the worker pools (and of scans, which run the same pipeline).

Prometheus metrics live in the process that does the work: a worker pool child serves them on
``FAKESCOPE_METRICS_PORT`` (see ``workers/celery_app.py``). Counter names and label values are bounded:
failure messages are mapped to a reason category, never used as labels themselves.

Worker logs are one JSON object a line, each carrying the ``job_id`` and ``item_id`` (or ``item_ids``)
of the work in hand, set through context variables by the task code.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "FAILURES",
    "IMAGES",
    "IMAGES_PER_S",
    "MODEL_SECONDS",
    "TASK_SECONDS",
    "JsonFormatter",
    "failure_reason",
    "log_context",
    "pool",
    "set_pool",
]

_POOL = {"name": "scan"}


def set_pool(name: str) -> None:
    _POOL["name"] = name


def pool() -> str:
    return _POOL["name"]


IMAGES = Counter("fakescope_images", "Images a pool finished, by outcome (done, failed, cached).", ["pool", "outcome"])
FAILURES = Counter("fakescope_failures", "Images that failed, by reason category.", ["pool", "reason"])
TASK_SECONDS = Histogram(
    "fakescope_task_seconds",
    "Wall time of one chunk task.",
    ["pool"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
MODEL_SECONDS = Histogram(
    "fakescope_model_batch_seconds",
    "Wall time of one model call on a batch (forward, TTA and GradCAM).",
    ["pool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IMAGES_PER_S = Gauge("fakescope_images_per_second", "Images/s of the pool's last chunk task.", ["pool"])

_REASONS = (
    ("empty file", "empty_file"),
    ("not an image", "not_an_image"),
    ("truncated", "truncated"),
    ("corrupt", "corrupt"),
    ("pixels", "too_many_pixels"),
    ("over the limit", "too_large"),
    ("unsafe", "unsafe_path"),
    ("missing from object storage", "missing_object"),
    ("not uploaded", "not_uploaded"),
    ("per-image time limit", "image_time_limit"),
    ("time limit", "time_limit"),
    ("retries", "retries_exhausted"),
    ("cannot read", "unreadable"),
)


def failure_reason(error: str | None) -> str:
    """A bounded category for a per-image error message, for metric labels."""
    text = (error or "").lower()
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    return "other"


_JOB: contextvars.ContextVar[str | None] = contextvars.ContextVar("fakescope_job_id", default=None)
_ITEM: contextvars.ContextVar[str | None] = contextvars.ContextVar("fakescope_item_id", default=None)
_ITEMS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("fakescope_item_ids", default=None)


@contextlib.contextmanager
def log_context(job_id: Any = None, item_id: Any = None, item_ids: list[Any] | None = None) -> Iterator[None]:
    """Tags every log line inside the block with the job and item(s) it is about."""
    tokens: list[tuple[contextvars.ContextVar[Any], contextvars.Token[Any]]] = []
    if job_id is not None:
        tokens.append((_JOB, _JOB.set(str(job_id))))
    if item_id is not None:
        tokens.append((_ITEM, _ITEM.set(str(item_id))))
    if item_ids is not None:
        tokens.append((_ITEMS, _ITEMS.set([str(i) for i in item_ids])))
    try:
        yield
    finally:
        for var, tok in reversed(tokens):
            var.reset(tok)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, pool, job_id, item_id, item_ids (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pool": pool(),
            "job_id": _JOB.get(),
            "item_id": _ITEM.get(),
        }
        if (ids := _ITEMS.get()) is not None:
            out["item_ids"] = ids
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)
