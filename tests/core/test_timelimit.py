"""The per-image time limit: the work stops in whichever thread it runs, and nothing leaks past a call."""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fakescope.detector import Detector
from fakescope.imageio import InputItem
from fakescope.pipeline import IMAGE_TIME_LIMIT_ERROR, classify_items
from fakescope.timelimit import TimeLimitExceeded, call_with_time_limit
from tests.utils.images import gradient_png
from tests.utils.stack import png_bytes


def _spin(seconds: float) -> int:
    """Pure-Python work: only a limit that stops the thread itself can end it early."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        n += 1
    return n


@pytest.mark.parametrize("threaded", [False, True])
def test_work_past_its_limit_is_stopped_where_it_runs(threaded: bool) -> None:
    def limited() -> float:
        t0 = time.monotonic()
        with pytest.raises(TimeLimitExceeded, match=r"time limit of 0\.2 s"):
            call_with_time_limit(0.2, lambda: _spin(30))
        return time.monotonic() - t0

    if threaded:
        with ThreadPoolExecutor(1) as pool:
            took = pool.submit(limited).result()
    else:
        took = limited()
    assert took < 5, took  # stopped, not run to its 30 s


def test_calls_that_end_near_their_limit_leave_nothing_behind() -> None:
    # Deadlines and returns race here hundreds of times: a stop must never land after its call.
    outcomes = {"returned": 0, "stopped": 0}
    for _ in range(500):
        try:
            call_with_time_limit(0.001, lambda: _spin(0.001))
            outcomes["returned"] += 1
        except TimeLimitExceeded:
            outcomes["stopped"] += 1
        _spin(0.001)  # a late delivery would raise here, outside any call
    assert sum(outcomes.values()) == 500
    assert call_with_time_limit(None, lambda: 7) == 7


def test_a_slow_image_fails_alone_and_its_batch_is_answered(tiny_checkpoint: Path) -> None:
    detector = Detector.load(tiny_checkpoint, device="cpu")
    big = gradient_png(71)
    small = [InputItem(f"{i}.png", functools.partial(png_bytes, s)) for i, s in enumerate(range(71_000, 71_006))]
    items = [*small[:3], InputItem("big.png", lambda: big), *small[3:]]
    for threads in (0, 2):
        t0 = time.monotonic()
        results = list(classify_items(detector, items, overlays=False, image_time_limit_s=0.2, decode_threads=threads))
        took = time.monotonic() - t0
        assert [r.name for r in results] == [i.name for i in items]
        assert results[3].error == f"{IMAGE_TIME_LIMIT_ERROR} of 0.2 s"
        assert all(r.ok and r.prediction in ("real", "fake") for r in results[:3] + results[4:]), results
        print(f"decode_threads={threads}: {took:.2f} s for the batch, the big image stopped at 0.2 s")
    (unbounded,) = classify_items(detector, [items[3]], overlays=False)
    assert unbounded.ok, unbounded.error  # the same image is fine without the limit: the limit stopped it
