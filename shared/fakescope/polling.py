"""Waiting for what another process does: one polling loop, with its deadline, its waits and a clock
a test can replace."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["backoff", "poll"]

T = TypeVar("T")


def backoff(first: float, factor: float, most: float) -> Iterator[float]:
    """``first``, then each wait ``factor`` times the last, up to ``most`` (and ``most`` from then on)."""
    wait = first
    while True:
        yield min(wait, most)
        wait *= factor


def poll(
    check: Callable[[], T | None],
    *,
    waits: Iterable[float],
    timeout_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T | None:
    """Calls ``check`` until it returns something other than None, and returns that.

    Between calls it sleeps the next of ``waits`` (the last one again once they run out), never past
    the deadline ``timeout_s`` from now; None when the deadline passes first (None: no deadline).
    """
    deadline = math.inf if timeout_s is None else clock() + timeout_s
    pending = iter(waits)
    wait = next(pending)
    while True:
        found = check()
        if found is not None:
            return found
        left = deadline - clock()
        if left <= 0:
            return None
        sleep(min(left, wait))
        wait = next(pending, wait)
