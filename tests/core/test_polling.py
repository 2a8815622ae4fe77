"""fakescope.polling: one loop for every wait, on a clock the test owns (nothing here sleeps)."""

from __future__ import annotations

import itertools

import pytest

from fakescope.polling import backoff, poll


class FakeClock:
    def __init__(self) -> None:
        self.now = 93_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_backoff_grows_to_its_cap_and_stays() -> None:
    assert list(itertools.islice(backoff(0.25, 2.0, 1.0), 5)) == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_poll_returns_the_first_answer_and_repeats_the_last_wait() -> None:
    clock = FakeClock()
    answers = iter([None, None, None, "done"])
    assert poll(lambda: next(answers), waits=(0.01, 0.02), clock=clock, sleep=clock.sleep) == "done"
    assert clock.slept == [0.01, 0.02, 0.02]


def test_poll_never_sleeps_past_its_deadline() -> None:
    clock = FakeClock()
    assert poll(lambda: None, waits=[0.4], timeout_s=1.0, clock=clock, sleep=clock.sleep) is None
    assert clock.slept[:2] == [0.4, 0.4] and clock.slept[2] == pytest.approx(0.2)
