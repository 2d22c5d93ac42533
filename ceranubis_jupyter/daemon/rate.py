"""How fast a node daemon's tasks finish, for sizing its claims (``node.py``)."""

from __future__ import annotations

import time

# Seconds over which the task rate (for the daemon's CLAIM_AHEAD_SECONDS) is measured:
# shorter follows a new project's pace sooner, longer is steadier.
RATE_WINDOW = 0.25


class TaskRate:
    """Outcomes per second while busy, over the last RATE_WINDOW or so (for sizing
    claims); idle time does not count, so the rate a node knew holds for its next work."""

    def __init__(self) -> None:
        self._since = time.monotonic()
        self._count = 0
        self._last = 0.0
        self._added = 0.0  # when outcomes last came

    def restart(self) -> None:
        """The node starts work after holding none: measure from now if it was idle
        (a node that ran dry between two claims goes on measuring)."""
        if time.monotonic() - self._added > RATE_WINDOW:
            self._since, self._count = time.monotonic(), 0

    def add(self, count: int) -> None:
        self._count += count
        self._added = time.monotonic()
        elapsed = time.monotonic() - self._since
        if elapsed >= RATE_WINDOW:
            self._last = self._count / elapsed
            self._since, self._count = time.monotonic(), 0

    def per_second(self) -> float:
        return self._last


__all__ = ["RATE_WINDOW", "TaskRate"]
