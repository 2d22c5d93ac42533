"""How many tasks a node may hold at once (its credit), per worker.

The client sizes each node's credit from how fast its results come back: enough tasks to
keep :data:`QUEUED_SECONDS` of work queued per worker, so tiny tasks travel in big frames
while slow tasks stay few per node and a slow host does not hoard the tail of a sweep.

That measure has a blind spot: it cannot tell a node's service time from our round trip to
it. When the round trip outlasts the queued work (many nodes sharing a few cores, or a far
host), a node runs dry between frames, the gap reads as a long service time, the credit
shrinks, the node runs dry sooner, and the link settles at the minimum: tasks go out in
frames of one or two and per-frame costs (encryption, system calls) dominate. So while many
tasks wait client-side, the credit has a second floor: a share of what waits
(:data:`QUEUE_SPREAD`), bounded by :data:`HOLD_SECONDS` of work at the measured pace. The
pace is over-estimated exactly when that floor matters, so a node never holds more than
that much real work, and a long queue still spreads over every node.
"""

from __future__ import annotations

# Tasks in flight per worker of a node, at most: enough to hide a network round trip behind
# tiny tasks and let them travel in big batches; the adaptive credit below (QUEUED_SECONDS)
# keeps slower tasks far under it, so a slow host does not hoard the tail of a sweep. It
# binds only for tasks under QUEUED_SECONDS / 512 (39 µs). At 128, W1 over SSH left each
# worker idle ~70 % of the time: 128 tiny tasks did not outlast the client's round trip
# under load (W1 over SSH 36,000/s at 128, 45,000-47,000/s at 384-768, one process).
CREDIT_PER_WORKER = 512
# ... and at least (one running, one waiting); a node starts here and grows its credit
# while it returns results quickly.
MIN_CREDIT_PER_WORKER = 2
# Seconds of work to keep queued per worker when sizing credit from observed task times.
QUEUED_SECONDS = 0.02
# While tasks wait client-side, a worker may hold 1/QUEUE_SPREAD of its even share of them:
# higher spreads a queue's tail more evenly, lower batches more when round trips are long.
QUEUE_SPREAD = 4
# ... but never more than this many seconds of work at the measured pace: the most a slow
# host can add to a sweep's tail through the queue floor.
HOLD_SECONDS = 0.25


def per_worker(service_time: float, waiting_per_worker: float) -> int:
    """Credit per worker for a node whose tasks take ``service_time`` seconds each (as the
    client measures it), while ``waiting_per_worker`` tasks per worker of every ready node
    wait client-side."""
    pace = max(service_time, 1e-6)
    queued = int(QUEUED_SECONDS / pace) + 1
    floor = int(min(waiting_per_worker / QUEUE_SPREAD, HOLD_SECONDS / pace))
    return max(MIN_CREDIT_PER_WORKER, min(CREDIT_PER_WORKER, max(queued, floor)))
