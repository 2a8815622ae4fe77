"""The workers' consumer: an event heartbeat sent into a dead broker returns at once and is kept.

Celery's own heartbeat retries forever on the worker's event loop, so a beat that fell into a broker
outage stalled the loop until the broker was back (``workers.consumer`` says what that stopped).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.asynchronous.timer import Timer

from tests.utils.stack import PrivateRedis, free_port, wait_until
from workers.celery_app import app as workers_app
from workers.consumer import Consumer, OneTryHeart

pytestmark = pytest.mark.slow


def _beats(watcher: redis.client.PubSub) -> int:
    """How many ``worker-heartbeat`` events ``watcher`` has seen published so far."""
    seen = 0
    while (message := watcher.get_message(timeout=0.2)) is not None:
        seen += message["type"] == "pmessage" and message["channel"].endswith(b"worker.heartbeat")
    return seen


def _watch(broker: PrivateRedis) -> redis.client.PubSub:
    watcher = redis.Redis(port=broker.port).pubsub()
    watcher.psubscribe("*celeryev*")
    wait_until(lambda: watcher.get_message(timeout=0.2) is not None, 30, "the event watcher to subscribe")
    return watcher


def test_the_workers_run_celerys_consumer_with_the_one_try_heartbeat() -> None:
    assert workers_app.conf.worker_consumer == "workers.consumer:Consumer"
    steps = Consumer.Blueprint.default_steps
    assert "workers.consumer:HeartStep" in steps
    assert "celery.worker.consumer.heart:Heart" not in steps
    # Everything else is Celery's, in Celery's order.
    assert len(steps) == len(set(steps)) == 10


def test_a_heartbeat_into_a_dead_broker_returns_and_is_sent_once_it_is_back(tmp_path: Path) -> None:
    broker = PrivateRedis(free_port(), tmp_path / "redis.log")
    broker.start()
    try:
        app = Celery("heartbeat-test", broker=broker.url)
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, hostname="heart@test", enabled=True)
            heart = OneTryHeart(Timer(), dispatcher)
            watcher = _watch(broker)
            heart._send("worker-heartbeat")
            assert wait_until(lambda: _beats(watcher), 30, "the beat sent while the broker is up") == 1

            broker.kill()
            returned = threading.Event()

            def beat() -> Any:
                heart._send("worker-heartbeat")
                returned.set()

            caller = threading.Thread(target=beat, daemon=True)
            caller.start()
            # Celery's own heartbeat would still be retrying here, for as long as the broker is away.
            caller.join(60)
            assert returned.is_set(), "a heartbeat sent into a dead broker did not return"

            broker.start()  # same port, empty
            watcher = _watch(broker)
            dispatcher.flush()
            assert wait_until(lambda: _beats(watcher), 30, "the kept beat, once the broker is back") == 1
    finally:
        broker.kill()
