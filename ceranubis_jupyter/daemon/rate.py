"""How fast a node daemon's tasks finish, for sizing its claims (``node.py``)."""

from __future__ import annotations

import time

# Seconds over which the task rate (for the daemon's CLAIM_AHEAD_SECONDS) is measured:
# shorter follows a new project's pace sooner, longer is steadier.
RATE_WINDOW = 0.25


class TaskRate:
    """Outcomes per second while busy, over the last RATE_WINDOW or so (for sizing
    claims); idle time does not count, so the rate a node knew holds for its next work.

    Until a whole window was measured, each write gives an estimate over what was: with
    none, a new daemon's claims stayed at their floor for its first RATE_WINDOW of work,
    and the rate that window measured was that floor's (Q1's first 20,000 tasks ran at
    36,000-62,000/s, against 72,000-75,000/s with the early estimate)."""

    def __init__(self) -> None:
        self._since = time.monotonic()
        self._count = 0
        self._last = 0.0
        self._added = 0.0  # when outcomes last came
        self._first = True  # no whole window measured yet

    def restart(self) -> None:
        """The node starts work after holding none: measure from now if it was idle
        (a node that ran dry between two claims goes on measuring)."""
        if time.monotonic() - self._added > RATE_WINDOW:
            self._since, self._count = time.monotonic(), 0

    def add(self, count: int) -> None:
        self._count += count
        self._added = now = time.monotonic()
        elapsed = now - self._since
        if elapsed >= RATE_WINDOW:
            self._last = self._count / elapsed
            self._since, self._count, self._first = now, 0, False
        elif self._first and elapsed > 0:
            self._last = self._count / elapsed  # until a whole window was measured

    def per_second(self) -> float:
        return self._last


__all__ = ["RATE_WINDOW", "TaskRate"]
