"""Kombu's filesystem transport (the embedded broker of ``fakescope serve``) with its exchange tables
read and written under one lock.

Kombu creates an exchange's table file and only then locks it, so a worker binding its queue can
read the file another worker has just created and not yet written, and dies on the empty JSON.
``fakescope serve`` starts its worker pools at once on a fresh data folder, which is when that
happens. Here every read and write of a table first takes an exclusive lock on one file beside
them, so no one sees a table half made. :func:`fakescope.tasks.make_celery` makes ``filesystem://``
mean this transport.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem

TABLES_LOCK = ".tables.lock"


class Channel(filesystem.Channel):
    @contextmanager
    def tables_locked(self) -> Iterator[None]:
        self.control_folder.mkdir(parents=True, exist_ok=True)
        with open(self.control_folder / TABLES_LOCK, "ab") as f:
            filesystem.lock(f, filesystem.LOCK_EX)
            try:
                yield
            finally:
                filesystem.unlock(f)

    def get_table(self, exchange: str) -> Any:
        with self.tables_locked():
            return super().get_table(exchange)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        with self.tables_locked():
            super()._queue_bind(exchange, routing_key, pattern, queue)

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any) -> None:
        with self.tables_locked():
            super()._delete(queue, exchange, routing_key, pattern, *args, **kwargs)


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    """Make ``filesystem://`` resolve to this transport in this process."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
