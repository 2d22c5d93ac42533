"""How many of a project's tasks its run keeps in flight.

Enough that every node stays fed while the run thread writes outcomes; few on purpose. A
task that stays in flight for long outlives two young collections of Python's cyclic
garbage collector, and its record and slot move to the oldest generation. With 8000 tasks
ahead (and a credit of 128 tasks per worker), each 20,000-task project of W1 caused one
full collection (~20 ms in a bare process, far more in a kernel with a big heap) and ran
at 0.80 of ``map``; with 2000 ahead, at 0.90-1.0 (the same run, alternating).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ..cluster.credit import CREDIT_PER_WORKER

# Tasks in flight per worker of the ready nodes: twice the most credit a node gives one
# worker, so that every node can be full and as much again waits for it.
SUBMIT_AHEAD_PER_WORKER = 2 * CREDIT_PER_WORKER
# Tasks in flight at least (while the nodes connect, and for one or two workers).
SUBMIT_AHEAD_LEAST = 2000
# Tasks in flight at most, however many workers there are.
SUBMIT_AHEAD = 8000
# Arguments in flight at most (big chunks): 8000 tasks of 1000 would be a whole project's
# payloads at once; this many keep the nodes busy for far longer than a write.
SUBMIT_AHEAD_ARGUMENTS = 200_000


class _Info(Protocol):
    @property
    def workers(self) -> int: ...


class _Link(Protocol):
    """What the window reads of a scheduler's node link."""

    @property
    def ready(self) -> bool: ...

    @property
    def info(self) -> _Info: ...


class FlightWindow:
    """The bound on a run's tasks in flight (``ahead``), and the count at which its run
    thread is woken to submit more (``low``, half of it)."""

    def __init__(self, chunksize: int) -> None:
        self.most = min(SUBMIT_AHEAD, max(2, SUBMIT_AHEAD_ARGUMENTS // chunksize))
        self.ahead = min(SUBMIT_AHEAD_LEAST, self.most)
        self.low = self.ahead // 2

    def follow(self, links: Iterable[_Link]) -> None:
        """Size the window to the workers of the nodes ready now."""
        workers = sum(link.info.workers for link in links if link.ready)
        self.ahead = min(max(SUBMIT_AHEAD_LEAST, SUBMIT_AHEAD_PER_WORKER * workers), self.most)
        self.low = self.ahead // 2
