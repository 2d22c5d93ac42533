"""What a node daemon holds: the tasks of its claimed arguments, and their outcomes.

The daemon tracks each task it submits (:meth:`Held.track`); the scheduler's listener
hands finished ones over (:meth:`Held.arrived`, loop thread: one append); the daemon's
thread turns them into store rows (:meth:`Held.collect`), which stay here until a write
succeeds (:meth:`Held.written`): a store that is down loses nothing.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any

from ..cluster.tasks import CANCELLED, FINISHED, ResultSlot, TaskRecord
from ..errors import BrokenCeranubisExecutor
from ..projects.queue_store import Claimed
from ..projects.records import Outcome
from ..projects.rows import encode, error_text
from ..projects.store import DONE_VALUES


@dataclass(frozen=True, slots=True)
class HeldTask:
    """A submitted task: the argument it runs, of which project, which attempt."""

    arg_id: int
    project: int
    attempts: int


class Held:
    """The tasks a node runs for the store and the rows it has not written yet.

    Args:
        host: the node's name, recorded as the host of each outcome.
        wake: set when a task finishes (the daemon's thread then collects it).
    """

    def __init__(self, host: str, wake: threading.Event) -> None:
        self.host = host
        self._wake = wake
        self.clock = time.time() - time.monotonic()  # task times are monotonic
        self.tasks: dict[int, HeldTask] = {}  # task id -> its argument
        self._finished: collections.deque[TaskRecord] = collections.deque()
        self._not_yet: list[TaskRecord] = []  # handed over, slot not set yet
        self.outcomes: list[Outcome] = []
        self.done_values: list[Any] = []  # Store.record_outcomes' flat plain results
        self.releases: list[int] = []  # arguments to give back (their tasks were dropped)
        self.touched: set[int] = set()  # projects with outcomes in the unwritten rows
        self.written_count = 0

    # ------------------------------------------------------------------ tasks

    def track(self, task_id: int, claimed: Claimed) -> None:
        """Know a task before it is submitted (it may finish at once)."""
        self.tasks[task_id] = HeldTask(claimed.arg_id, claimed.project, claimed.attempts)

    def arrived(self, record: TaskRecord) -> None:
        """Scheduler listener (loop thread): keep a finished task of ours, wake the daemon."""
        if record.task_id in self.tasks:
            self._finished.append(record)
            if not self._wake.is_set():
                self._wake.set()

    def drop(self, task_ids: Iterable[int]) -> list[HeldTask]:
        """Forget tasks (their project was cancelled, or they are released)."""
        return [held for t in task_ids if (held := self.tasks.pop(t, None)) is not None]

    def of_projects(self, projects: set[int]) -> list[int]:
        """Ids of the tasks of these projects."""
        return [t for t, held in self.tasks.items() if held.project in projects]

    def projects(self) -> list[int]:
        """The projects of the tasks held now."""
        return sorted({held.project for held in self.tasks.values()})

    # ------------------------------------------------------------------ rows

    def unwritten(self) -> bool:
        """Rows wait for a write."""
        return bool(self.outcomes or self.done_values or self.releases)

    def collect(self) -> None:
        """Turn the finished tasks handed over into rows."""
        records, self._not_yet = self._not_yet, []
        while self._finished:
            records.append(self._finished.popleft())
        for record in records:
            slot = record.future
            assert isinstance(slot, ResultSlot), "the daemon's tasks carry ResultSlots"
            if not slot.done():  # finished just now: its slot is set right after
                self._not_yet.append(record)
                continue
            held = self.tasks.pop(record.task_id, None)
            if held is not None:
                self._row(record, slot, held)

    def _row(self, record: TaskRecord, slot: ResultSlot, held: HeldTask) -> None:
        error = slot.error
        if slot.state == CANCELLED or isinstance(error, CancelledError):
            return  # its project was cancelled: the store says so already
        if isinstance(error, BrokenCeranubisExecutor):
            self.releases.append(held.arg_id)  # the local node broke: another runs it
            return
        started = record.started + self.clock if record.started else None
        finished = record.finished + self.clock if record.finished else None
        self.touched.add(held.project)
        if slot.state == FINISHED and error is None:
            try:
                blob = slot.blob or encode(slot.value)
            except Exception as failure:
                text = f"the result could not be pickled for the store: {error_text(failure)}"
                self.fail(held, text, started, finished, record.output)
                return
            if not record.output and started is not None:
                self.done_values += (held.arg_id, blob, self.host, held.attempts, started,
                                     finished)  # fmt: skip
                return
            output = record.output or None
            self.outcomes.append(Outcome(held.arg_id, "done", blob, None, self.host,
                                         held.attempts, started, finished, output))  # fmt: skip
            return
        self.fail(held, error_text(error) if error else "no result", started, finished,
                  record.output)  # fmt: skip

    def fail(
        self,
        held: HeldTask,
        text: str,
        started: float | None = None,
        finished: float | None = None,
        output: str = "",
    ) -> None:
        """Queue a failed outcome for ``held``'s argument."""
        self.touched.add(held.project)
        self.outcomes.append(
            Outcome(held.arg_id, "failed", None, text, self.host, held.attempts, started,
                    finished or time.time(), output or None)
        )  # fmt: skip

    def count(self) -> int:
        """Outcomes in the unwritten rows."""
        return len(self.outcomes) + len(self.done_values) // DONE_VALUES

    def written(self) -> None:
        """The rows are in the store."""
        self.written_count += self.count()
        self.outcomes.clear()
        self.done_values.clear()
        self.releases.clear()
        self.touched.clear()


__all__ = ["Held", "HeldTask"]
