"""How many tasks a node hands each worker at once: about ``BATCH_SECONDS`` of work, by
the running mean of what tasks took (:class:`Pace`).

Stdlib only: shipped to bare hosts with the node (see ``bootstrap``).
"""

from __future__ import annotations

# Tasks a worker holds at the least: one running, one waiting, so a pipe hop never idles it.
WORKER_PREFETCH = 2
# Seconds of work handed to a worker in one batch when tasks are tiny: amortizes the pipe
# hop (tens of µs) over many tasks, yet short enough that batches spread evenly.
BATCH_SECONDS = 0.002
# Upper bound on a worker's batch, whatever the pace (bounds memory and re-runs on a crash).
MAX_PREFETCH = 256
# Weight of the newest sample in the running mean of task durations (higher adapts faster,
# lower is steadier).
PACE_WEIGHT = 0.25


class Pace:
    """The running mean of seconds per task; starts slow so that first batches stay small."""

    def __init__(self) -> None:
        self.task_seconds = BATCH_SECONDS

    def sample(self, seconds_per_task: float) -> None:
        """A worker reported results that took this long each, on average."""
        self.task_seconds += PACE_WEIGHT * (seconds_per_task - self.task_seconds)

    def prefetch(self, queued: int, held: int, workers: int) -> int:
        """Tasks a worker may hold: ``BATCH_SECONDS`` of work, within its fair share.

        The paced share is half of what the node has (``queued`` and ``held`` by its
        ``workers``), so the other half waits in the queue and a worker that reports gets
        its next batch without a client round trip; no worker ever takes more than an
        even split.
        """
        paced = int(BATCH_SECONDS / max(self.task_seconds, 1e-7))
        even = -(-(queued + held) // workers)
        half = -(-even // 2)
        return min(max(WORKER_PREFETCH, min(paced, half)), even, MAX_PREFETCH)


__all__ = ["BATCH_SECONDS", "MAX_PREFETCH", "PACE_WEIGHT", "WORKER_PREFETCH", "Pace"]
