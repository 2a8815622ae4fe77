"""A process-wide bound on the upload bytes the API holds in memory at once.

Each upload request holds a window of images (up to 256 of them, or 256 MB) between reading them
and storing them. Without a shared bound, a few concurrent requests hold a few windows each: the
process's memory grows with the number of clients. :class:`ByteBudget` is that bound: a request
reserves an image's bytes before reading it and gives them back once the window is stored.

A request that would wait while it holds bytes of its own stores its window first (see
``create_job``), so two requests can never each hold half the budget while waiting for the other.
"""

from __future__ import annotations

import threading
import time

__all__ = ["ByteBudget", "Lease", "UploadBusy"]


class UploadBusy(RuntimeError):
    """The uploads in progress hold the whole budget and none gave bytes back in time."""


class ByteBudget:
    """``limit`` bytes shared by every thread of the process; ``wait_s``: how long a reservation waits."""

    def __init__(self, limit: int, wait_s: float = 30.0) -> None:
        if limit <= 0:
            raise ValueError(f"a byte budget must be positive, got {limit}")
        self.limit = limit
        self.wait_s = wait_s
        self.used = 0
        self._cond = threading.Condition()

    def try_acquire(self, n: int) -> bool:
        """Reserves ``n`` bytes if they are free now. A request larger than the whole budget is let
        through alone (when nothing else is held), so a budget below one image never deadlocks."""
        with self._cond:
            return self._take(n)

    def acquire(self, n: int) -> None:
        """Reserves ``n`` bytes, waiting up to ``wait_s`` for other requests to give bytes back.

        Raises:
            UploadBusy: they did not in time.
        """
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while not self._take(n):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UploadBusy(f"uploads in progress hold {self.used} of {self.limit} bytes; retry shortly")
                self._cond.wait(left)

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._cond:
            self.used = max(0, self.used - n)
            self._cond.notify_all()

    def _take(self, n: int) -> bool:
        if n <= 0:
            return True
        if self.used + n <= self.limit or self.used == 0:
            self.used += n
            return True
        return False


class Lease:
    """What one request holds of a budget (none at all without one): ``reserve`` and ``give_back``
    keep count, and ``close`` gives back whatever is still held, however the request ended."""

    def __init__(self, budget: ByteBudget | None) -> None:
        self.budget = budget
        self.held = 0

    def reserve(self, n: int, *, wait: bool) -> bool:
        """Reserves ``n`` bytes; ``wait=False``: only if they are free now (returns whether it got them).

        Raises:
            UploadBusy: ``wait`` and they did not come free in time.
        """
        if self.budget is None:
            return True
        if wait:
            self.budget.acquire(n)
        elif not self.budget.try_acquire(n):
            return False
        self.held += n
        return True

    def give_back(self, n: int) -> None:
        n = min(n, self.held)
        if self.budget is not None and n > 0:
            self.budget.release(n)
            self.held -= n

    def close(self) -> None:
        self.give_back(self.held)
