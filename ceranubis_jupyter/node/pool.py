"""The supervisor's worker processes: what it knows of each, and how it forks, kills and
reaps them.

Stdlib + dill only: shipped to bare hosts with the node (see ``bootstrap``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
from dataclasses import dataclass, field

from ..wire import protocol as p
from . import worker
from .outbox import Outbox, grow_pipe
from .slot import RunningSlot


@dataclass
class WorkerState:
    """One forked worker as the supervisor sees it."""

    pid: int
    to_worker: int
    from_worker: int
    outbox: Outbox
    slot: RunningSlot
    # Its own worker's results: uncapped, the client's cap applies to what leaves the node.
    decoder: p.FrameDecoder = field(default_factory=lambda: p.FrameDecoder(p.UNCAPPED))
    tasks: collections.deque[p.Task] = field(default_factory=collections.deque)  # in order
    held: set[int] = field(default_factory=set)  # the ids of ``tasks``
    seen_delivered: int = 0  # the last direct delivery the node has accounted for
    functions: set[int] = field(default_factory=set)
    busy_since: float = 0.0  # when it last had news to give (for pacing)
    timeouts: dict[int, float] = field(default_factory=dict)  # task id -> timeout, if any
    cancelled: set[int] = field(default_factory=set)


def start(client: worker.ClientPipe | None) -> WorkerState:
    """Fork a worker with its two pipes (tasks down, results up); both non-blocking here."""
    task_read, task_write = os.pipe()
    result_read, result_write = os.pipe()
    for fd in (task_write, result_write):
        grow_pipe(fd)
    slot = RunningSlot()
    pid = os.fork()
    if pid == 0:
        os.close(task_write)
        os.close(result_read)
        worker.run(task_read, result_write, slot, client)
    os.close(task_read)
    os.close(result_write)
    os.set_blocking(task_write, False)
    os.set_blocking(result_read, False)  # a stale readiness event must not hang the node
    return WorkerState(pid, task_write, result_read, Outbox(task_write), slot)


def overdue(workers: list[WorkerState], now: float) -> list[tuple[WorkerState, int, int]]:
    """``(worker, task, status)`` for each worker to kill for its running task's sake: a
    task past its timeout (``TIMED_OUT``), else one cancelled after it was handed over and
    started since (``CANCELLED``; it leaves the worker's cancelled set)."""
    found = []
    for state in workers:
        if not state.cancelled and not state.timeouts:
            continue
        running, started = state.slot.get()
        timeout = state.timeouts.get(running, 0.0)
        if timeout > 0 and now - started > timeout:
            found.append((state, running, p.TIMED_OUT))
        elif running in state.cancelled:
            state.cancelled.discard(running)
            found.append((state, running, p.CANCELLED))
    return found


def kill(pid: int) -> None:
    """SIGKILL a worker (no-op if it is gone)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def reap(pid: int) -> int:
    """Wait for a child and return its exit code, negative for a signal (like Popen)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return 0
    return os.waitstatus_to_exitcode(status)
