"""Queue depth per worker queue, read through the broker (Redis, AMQP or the filesystem transport)."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

__all__ = ["queue_depths"]


def queue_depths(app: Celery, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting (not yet delivered to a worker) in each of ``queues``."""
    depths: dict[str, int] = {}
    with app.connection_for_read() as conn, conn.channel() as channel:
        for q in queues:
            # A passive-style declare returns the count without changing the queue; declaring a queue
            # that does not exist yet creates it empty, which is also its true depth.
            depths[q] = channel.queue_declare(queue=q, passive=False, durable=True, auto_delete=False).message_count
    return depths
