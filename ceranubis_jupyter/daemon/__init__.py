"""Node daemons of queue mode: long-running nodes that pull work from the project store.

A client commits a project with ``queue=True`` (``projects/commit.py``); its arguments
wait in the store (``projects/queue_store.py``). Each daemon (``ceranubis node --store
URL``) is a claim loop around an in-process local node: the same worker processes as an
SSH node (a :class:`~ceranubis_jupyter.cluster.executor.NodeExecutor` on the embedded
default), so crash handling, retries, timeouts, output capture and cancellation are the
executor's own::

    store ──claim (batch, lease)──► QueueNode ──submit──► NodeExecutor ─► workers
      ▲                               │  ▲                    │
      └──outcomes (batch), renew,─────┘  └─finished records───┘
         heartbeat, expire leases
      LISTEN/NOTIFY (PostgreSQL) wakes it; a bounded poll is the fallback (SQLite: only)

- ``node``: :class:`QueueNode`, the loop (claim, submit, write, renew, stop).
- ``held``: what a node holds: its claimed arguments' tasks, and their outcomes to write.
- the ``LISTEN`` thread (PostgreSQL) is ``projects.queue_listen``'s (clients use it too).

May import: ``projects``, ``cluster``, ``node``, ``wire``, ``errors``, ``exits``.
"""

from __future__ import annotations

from .node import QueueNode, run_node
from .tunables import CLAIM_PER_WORKER, LEASE_SECONDS

__all__ = ["CLAIM_PER_WORKER", "LEASE_SECONDS", "QueueNode", "run_node"]
