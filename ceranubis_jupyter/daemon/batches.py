"""When a node daemon runs tiny tasks in batches, and how many to a batch.

A task of its own costs the daemon, its node and the worker a few tens of microseconds
of hand-offs; a function that takes less than that would spend most of its node's CPU on
them. So the daemon measures how long each function's tasks take (:class:`Pace`) and runs
the arguments of quick ones in batches (``wire.batches.EachOutcome``: one task, an
outcome per argument), sized to take about :data:`BATCH_SECONDS`. A function not yet
measured, a project with a timeout, and a slow function run a task per argument, as
before. ``CERANUBIS_FAST_PATHS_OFF=queue_batches`` turns batches off.
"""

from __future__ import annotations

# Functions whose tasks take less than this on average run in batches: shorter keeps
# more projects on a task per argument (cheaper to cancel or retry one by one), longer
# batches functions whose hand-offs matter less.
BATCH_BELOW_SECONDS = 0.005
# About how long a batch runs: longer spends less per argument on hand-offs, shorter
# spreads a claim over more workers sooner and redoes less after a crash.
BATCH_SECONDS = 0.05
# A batch stops before its next argument after this long (a function that turned slow):
# what it did not reach is submitted again.
BATCH_BUDGET_SECONDS = 0.2
# The most arguments in one batch (the frame and the outcome list it makes).
MAX_BATCH = 512
# Weight of the newest measurement in a function's pace (an exponential mean).
PACE_WEIGHT = 0.3


class Pace:
    """Seconds a task of each function takes here, as a running mean."""

    def __init__(self) -> None:
        self._seconds: dict[int, float] = {}

    def note(self, fn_id: int, seconds: float) -> None:
        """A task of ``fn_id`` (or an argument of a batch) took ``seconds``."""
        known = self._seconds.get(fn_id)
        self._seconds[fn_id] = seconds if known is None else known + PACE_WEIGHT * (seconds - known)

    def batch_size(self, fn_id: int, count: int, workers: int) -> int:
        """Arguments per task for ``count`` claimed arguments of ``fn_id`` on ``workers``
        workers: 1 (a task each) unless the function is measured quick."""
        seconds = self._seconds.get(fn_id)
        if seconds is None or seconds >= BATCH_BELOW_SECONDS or count < 2:
            return 1
        size = min(MAX_BATCH, int(BATCH_SECONDS / max(seconds, 1e-7)))
        return max(1, min(size, -(-count // workers)))  # every worker gets some


__all__ = ["BATCH_BUDGET_SECONDS", "Pace"]
