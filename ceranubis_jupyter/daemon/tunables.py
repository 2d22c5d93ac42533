"""A node daemon's times and sizes: its leases, claims, writes, heartbeats and polls."""

from __future__ import annotations

# Seconds a claim holds its arguments unless renewed: a lost node's work runs elsewhere
# this long after its last renewal; shorter recovers sooner but costs more renewals.
LEASE_SECONDS = 30.0
# Arguments held per worker, at least: more keeps short tasks flowing through a store
# round trip; fewer spreads a small project of long tasks over more nodes.
CLAIM_PER_WORKER = 8
# Seconds of work held ahead, at the rate tasks finish here: tiny tasks are then claimed
# thousands at a time (one round trip each), long ones CLAIM_PER_WORKER per worker. Less
# evens out a project's end between nodes (with 0.5 s, one node of two ran the last
# tenth of a second of Q1 alone); more costs more claims.
CLAIM_AHEAD_SECONDS = 0.2
# The most arguments held at once (memory, and what a lost node leaves to its lease).
MAX_HELD = 20000
# Seconds between outcome writes while tasks finish: longer batches cost fewer
# transactions, shorter ones show progress (and free the next claim) sooner.
WRITE_SECONDS = 0.05
# Seconds between heartbeats of the nodes row while the node holds work (the views show
# its progress at this pace), and while idle (each beat is a transaction on the server,
# times every node: see NODE_SILENT_SECONDS, which must stay well above it).
BEAT_SECONDS = 2.0
IDLE_BEAT_SECONDS = 30.0
# Seconds between a project's progress notifications (``outcome:<id>`` on the views'
# channel): a view needs a few a second; one per write batch would be one per 50 ms.
PROGRESS_NOTIFY_SECONDS = 0.25
# Seconds between looks for cancelled projects (a NOTIFY makes it at once): the bound on
# how long a cancelled task may go on running.
CANCEL_POLL_SECONDS = 0.5
# Seconds an idle node sleeps before looking for work unwoken: with LISTEN (PostgreSQL)
# only a fallback (and each look costs the server, times every node), so long; on SQLite
# the only way, so short. An idle node sweeps others' expired leases at this pace too.
IDLE_POLL_PG = 30.0
IDLE_POLL_SQLITE = 0.2
# Seconds a stopping node lets its running tasks finish before releasing them.
DRAIN_SECONDS = 10.0
# Backoff after a store error: first pause, and the longest.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0


__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "BEAT_SECONDS",
    "CANCEL_POLL_SECONDS",
    "CLAIM_AHEAD_SECONDS",
    "CLAIM_PER_WORKER",
    "DRAIN_SECONDS",
    "IDLE_BEAT_SECONDS",
    "IDLE_POLL_PG",
    "IDLE_POLL_SQLITE",
    "LEASE_SECONDS",
    "MAX_HELD",
    "PROGRESS_NOTIFY_SECONDS",
    "WRITE_SECONDS",
]
