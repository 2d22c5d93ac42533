"""A node daemon's task rate (``daemon/rate.py``), which sizes its claims: known from its
first write on, then measured over whole windows; idle time does not count."""

from __future__ import annotations

import pytest

from ceranubis_jupyter.daemon import rate as rate_module
from ceranubis_jupyter.daemon.rate import RATE_WINDOW, TaskRate


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(rate_module, "time", fake)
    return fake


def test_the_first_write_gives_a_rate_before_a_whole_window(clock: Clock) -> None:
    rate = TaskRate()
    assert rate.per_second() == 0.0
    clock.now += RATE_WINDOW / 5
    rate.add(100)
    assert rate.per_second() == pytest.approx(100 / (RATE_WINDOW / 5))
    clock.now += RATE_WINDOW / 5  # the first window goes on: the estimate follows it
    rate.add(300)
    assert rate.per_second() == pytest.approx(400 / (2 * RATE_WINDOW / 5))


def test_after_a_whole_window_the_rate_changes_only_per_window(clock: Clock) -> None:
    rate = TaskRate()
    clock.now += RATE_WINDOW
    rate.add(1000)
    assert rate.per_second() == pytest.approx(1000 / RATE_WINDOW)
    clock.now += RATE_WINDOW / 5
    rate.add(10)  # inside the next window: not a new estimate yet
    assert rate.per_second() == pytest.approx(1000 / RATE_WINDOW)
    clock.now += RATE_WINDOW
    rate.add(10)
    assert rate.per_second() == pytest.approx(20 / (RATE_WINDOW * 6 / 5))


def test_idle_time_does_not_count(clock: Clock) -> None:
    rate = TaskRate()
    clock.now += RATE_WINDOW
    rate.add(500)
    clock.now += 100 * RATE_WINDOW  # idle: nothing held
    rate.restart()
    assert rate.per_second() == pytest.approx(500 / RATE_WINDOW)  # what it knew holds
    clock.now += RATE_WINDOW
    rate.add(1000)
    assert rate.per_second() == pytest.approx(1000 / RATE_WINDOW)


def test_a_real_clock_gives_a_rate_at_the_first_write() -> None:
    rate = TaskRate()
    rate.add(100)
    assert rate.per_second() > 0
