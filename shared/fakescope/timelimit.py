"""A time limit on one call, in whichever thread it runs: the per-image bound of a classify chunk.

A chunk's task has one time limit for all its images; a single image whose decoding or provenance
parsing costs tens of seconds would spend it for the others. :func:`call_with_time_limit` bounds one
image's work instead. A watchdog thread raises an exception *in the calling thread* when the limit
passes (``PyThreadState_SetAsyncExc``, the mechanism behind ``KeyboardInterrupt`` in threads), so the
work itself stops, not only the wait for it: the exception is raised at the next Python instruction,
which in Pillow's decoders and our parsers comes after at most one block of native work, each bounded
by the byte and pixel limits. Signals (``SIGALRM``) would reach only the main thread, and a pool of
decoding threads runs images off it.

The exception is a ``BaseException``, so the ``except Exception`` of a parser cannot swallow it, and
it is never delivered outside the call: the watchdog fires at most once per call, under a lock the
call takes to end, which clears a delivery still pending.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["TimeLimitExceeded", "call_with_time_limit"]

T = TypeVar("T")


class TimeLimitExceeded(Exception):
    """The call ran past its limit and was stopped."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"ran past its time limit of {seconds:g} s")
        self.seconds = seconds


class _Expired(BaseException):
    """Raised inside the call by the watchdog; turned into :class:`TimeLimitExceeded` at its edge."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    # A NULL exception clears one still pending; PyDLL calls run with the GIL held.
    arg = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), arg)


@dataclass(eq=False)
class _Entry:
    thread_id: int
    deadline: float
    fired: bool = False


class _Watchdog:
    """One daemon thread per process that stops every limited call past its deadline.

    The calls take only a plain lock (its ``with`` enters and exits in C: no Python frame in between
    where the exception could land with the lock held); the watchdog sleeps on an event.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._entries: list[_Entry] = []
        self._thread: threading.Thread | None = None
        # The deadline the watchdog sleeps until (None: until woken). A call whose deadline is later
        # need not wake it: with one limit for every image, only the first of a quiet spell does.
        self._next_wake: float | None = None

    def arm(self, seconds: float) -> _Entry:
        entry = _Entry(threading.get_ident(), time.monotonic() + seconds)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fakescope-time-limit", daemon=True)
                self._thread.start()
            self._entries.append(entry)
            wake = self._next_wake is None or entry.deadline < self._next_wake
        if wake:
            self._wake.set()
        return entry

    def disarm(self, entry: _Entry) -> None:
        """Ends ``entry``: it can no longer fire, and a delivery not yet raised is cleared."""
        while True:
            try:
                with self._lock:
                    if entry in self._entries:
                        self._entries.remove(entry)
                    if entry.fired:
                        _set_async_exc(entry.thread_id, None)
                return
            except _Expired:
                # Delivered here, before the clear: it is spent, and the entry cannot fire again.
                continue

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                for entry in self._entries:
                    if not entry.fired and entry.deadline <= now:
                        entry.fired = True
                        _set_async_exc(entry.thread_id, _Expired)
                waiting = [e.deadline for e in self._entries if not e.fired]
                self._next_wake = min(waiting) if waiting else None
                self._wake.clear()
            self._wake.wait(self._next_wake - now if self._next_wake is not None else None)

    def _after_fork(self) -> None:
        # Threads do not survive fork, and the lock may have been held by one that did not.
        self.__init__()  # type: ignore[misc]


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG._after_fork)


def call_with_time_limit(seconds: float | None, fn: Callable[[], T]) -> T:
    """``fn()``, stopped after ``seconds`` (None: no limit).

    Raises:
        TimeLimitExceeded: ``fn`` was still running after ``seconds``; it was stopped there.
    """
    if seconds is None:
        return fn()
    if seconds <= 0:
        raise ValueError(f"a time limit must be positive, not {seconds}")
    entry = _WATCHDOG.arm(seconds)
    try:
        try:
            return fn()
        finally:
            _WATCHDOG.disarm(entry)
    except _Expired:
        # Raised in fn, or in the finally before disarm took its lock: either way it is spent now.
        _WATCHDOG.disarm(entry)
        raise TimeLimitExceeded(seconds) from None
