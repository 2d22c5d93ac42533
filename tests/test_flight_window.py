"""A project run's window of tasks in flight follows the workers of the ready nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ceranubis_jupyter.projects import window
from ceranubis_jupyter.projects.window import FlightWindow


@dataclass
class _Info:
    workers: int


@dataclass
class _Link:
    """The two things the window reads of a scheduler's NodeLink."""

    workers: int
    ready: bool = True
    info: _Info = field(init=False)

    def __post_init__(self) -> None:
        self.info = _Info(self.workers)


def test_few_workers_get_the_least_window() -> None:
    flight = FlightWindow(chunksize=1)
    assert (flight.ahead, flight.low) == (window.SUBMIT_AHEAD_LEAST, window.SUBMIT_AHEAD_LEAST // 2)
    flight.follow([_Link(1)])
    assert flight.ahead == window.SUBMIT_AHEAD_LEAST


@pytest.mark.parametrize("workers", [2, 3, 6])
def test_the_window_grows_with_ready_workers_only(workers: int) -> None:
    flight = FlightWindow(chunksize=1)
    flight.follow([_Link(workers // 2), _Link(workers - workers // 2), _Link(64, ready=False)])
    wanted = max(window.SUBMIT_AHEAD_LEAST, window.SUBMIT_AHEAD_PER_WORKER * workers)
    assert flight.ahead == min(wanted, window.SUBMIT_AHEAD) and flight.low == flight.ahead // 2


def test_many_workers_stop_at_the_most() -> None:
    flight = FlightWindow(chunksize=1)
    flight.follow([_Link(1000)])
    assert flight.ahead == window.SUBMIT_AHEAD


def test_big_chunks_bound_the_arguments_in_flight() -> None:
    flight = FlightWindow(chunksize=1000)
    flight.follow([_Link(64)])
    assert flight.ahead == window.SUBMIT_AHEAD_ARGUMENTS // 1000
