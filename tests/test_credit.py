"""A node's credit (cluster/credit.py): the queue floor and its bounds."""

from __future__ import annotations

from ceranubis_jupyter.cluster.credit import (
    CREDIT_PER_WORKER,
    HOLD_SECONDS,
    MIN_CREDIT_PER_WORKER,
    QUEUE_SPREAD,
    QUEUED_SECONDS,
    per_worker,
)


def test_nothing_waiting_keeps_the_paced_credit() -> None:
    assert per_worker(QUEUED_SECONDS / 10, 0.0) == 11
    assert per_worker(1.0, 0.0) == MIN_CREDIT_PER_WORKER


def test_tiny_tasks_reach_the_cap() -> None:
    assert per_worker(1e-5, 0.0) == CREDIT_PER_WORKER
    assert per_worker(0.0, 1e9) == CREDIT_PER_WORKER


def test_a_long_queue_lifts_a_latency_bound_credit() -> None:
    """A pace inflated by round trips (10 ms per tiny task) no longer pins the credit at
    the minimum while thousands of tasks wait."""
    inflated = 0.010
    assert per_worker(inflated, 0.0) == 3
    assert per_worker(inflated, 1250.0) == int(HOLD_SECONDS / inflated)


def test_the_floor_is_a_share_of_what_waits() -> None:
    assert per_worker(0.010, 40.0) == 40 // QUEUE_SPREAD


def test_the_floor_never_holds_more_than_hold_seconds_of_work() -> None:
    for pace in (0.05, 0.1, 1.0, 10.0):
        credit = per_worker(pace, 1e6)
        assert credit == MIN_CREDIT_PER_WORKER or credit * pace <= HOLD_SECONDS
