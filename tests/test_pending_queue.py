"""The client's queue of waiting tasks: highest priority first, then oldest, per group.

Maps and projects push by rising task id (the queue's O(1) run); re-queued tasks and
other priorities come out of order (its heap). Every order must pop as a full sort would.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import Future

from ceranubis_jupyter.cluster.tasks import PendingQueue, TaskRecord

# Seeds of the random histories below (fixed: a failure names its history).
SEEDS = range(40)
GROUPS = (None, "gpu", "cpu")


def _record(task_id: int, priority: int = 0, group: str | None = None) -> TaskRecord:
    return TaskRecord(task_id, Future(), 1, 0, 0, b"", priority=priority, group=group)


def _reference_pop(waiting: list[TaskRecord], group: str | None) -> TaskRecord | None:
    """What a host of ``group`` must get: a task of no group or of its own, best first."""
    allowed = [r for r in waiting if r.group is None or r.group == group]
    if not allowed:
        return None
    best = min(allowed, key=lambda r: (-r.priority, r.task_id))
    waiting.remove(best)
    return best


def doomed_in(doomed: set[int]) -> Callable[[TaskRecord], bool]:
    return lambda record: record.task_id in doomed


def _pop_ids(queue: PendingQueue, count: int) -> list[int]:
    ids = []
    for _ in range(count):
        record = queue.pop_for(None)
        assert record is not None
        ids.append(record.task_id)
    return ids


def test_a_map_in_order_pops_in_order() -> None:
    queue = PendingQueue()
    for task_id in range(1, 1001):
        queue.push(_record(task_id))
    assert _pop_ids(queue, 1000) == list(range(1, 1001))
    assert queue.pop_for(None) is None and len(queue) == 0


def test_requeued_and_prioritized_tasks_come_first_in_their_order() -> None:
    queue = PendingQueue()
    for task_id in range(10, 20):
        queue.push(_record(task_id))
    queue.push(_record(3))  # re-queued: older than every waiting one
    queue.push(_record(25, priority=2))  # newer, but a higher priority
    queue.push(_record(5))
    assert _pop_ids(queue, 13) == [25, 3, 5, *range(10, 20)]


def test_random_histories_pop_as_a_full_sort_would() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        queue, next_id = PendingQueue(), 1
        waiting: list[TaskRecord] = []
        popped: list[TaskRecord] = []
        for _ in range(600):
            action = rng.random()
            if action < 0.5:  # a run of a map: rising ids, one priority and group
                priority, group = rng.choice((0, 0, 1, -1)), rng.choice(GROUPS)
                for _ in range(rng.randint(1, 6)):
                    record = _record(next_id, priority, group)
                    next_id += 1
                    queue.push(record)
                    waiting.append(record)
            elif action < 0.6 and popped:  # a task re-queued (its node was lost)
                record = popped.pop(rng.randrange(len(popped)))
                queue.push(record)
                waiting.append(record)
            elif action < 0.65:  # cancel some
                doomed = {r.task_id for r in waiting if rng.random() < 0.2}
                got = queue.remove(doomed_in(doomed))
                assert sorted(r.task_id for r in got) == sorted(doomed), seed
                waiting = [r for r in waiting if r.task_id not in doomed]
            else:
                group = rng.choice(GROUPS)
                expected = _reference_pop(waiting, group)
                got_record = queue.pop_for(group)
                assert got_record is expected, (seed, group)
                if got_record is not None:
                    popped.append(got_record)
            assert len(queue) == len(waiting), seed
