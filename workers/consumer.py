"""The workers' Celery consumer: Celery's own, with an event heartbeat that never blocks the event loop.

Celery's heartbeat step sends ``worker-heartbeat`` every two seconds with ``retry=True`` and no retry
policy, which kombu retries forever, on the worker's event loop. Should the broker go away at a beat
before the consumer has read the closed connection, the loop stops there for the whole outage: the
consumer never sees the broker gone (so it does not reconnect until the broker is back and the beat
goes through), finished chunks are not collected from the pool, and the parent's time limits do not
fire. Here a beat is sent once: the event dispatcher keeps one it could not send (its
``buffer_while_offline``), the next beat comes two seconds later, and the consumer's own reconnect
deals with the outage. Selected by ``worker_consumer`` in ``workers.celery_app``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from celery.worker import heartbeat
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.heart import Heart as CeleryHeartStep

__all__ = ["Consumer", "HeartStep", "OneTryHeart"]


class OneTryHeart(heartbeat.Heart):
    """Celery's heartbeat timer, each beat (and the online and offline events) sent without retrying."""

    def _send(self, event: str, retry: bool = True) -> Any:
        return super()._send(event, retry=False)


class HeartStep(CeleryHeartStep):
    """Celery's heartbeat bootstep (same options: ``--without-heartbeat``, ``--heartbeat-interval``),
    starting a :class:`OneTryHeart`."""

    name = "fakescope.heart"

    def start(self, c: Any) -> None:
        c.heart = OneTryHeart(c.timer, c.event_dispatcher, self.heartbeat_interval)
        c.heart.start()


_CELERY_HEART = "celery.worker.consumer.heart:Heart"


class Consumer(CeleryConsumer):
    """Celery's consumer with :class:`HeartStep` in place of its heartbeat step."""

    class Blueprint(CeleryConsumer.Blueprint):
        default_steps: ClassVar[list[str]] = [
            "workers.consumer:HeartStep" if step == _CELERY_HEART else step
            for step in CeleryConsumer.Blueprint.default_steps
        ]
