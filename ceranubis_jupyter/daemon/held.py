"""What a node daemon holds: the tasks of its claimed arguments, and their outcomes.

The daemon tracks each task it submits (:meth:`Held.track`); the scheduler's listener
hands finished ones over (:meth:`Held.arrived`, loop thread: one append); the daemon's
thread turns them into store rows (:meth:`Held.collect`), which stay here until a write
succeeds (:meth:`Held.written`): a store that is down loses nothing. A batch of a quick
function's arguments (:meth:`Held.track_batch`) gives a row per argument; one that failed
as a whole (its worker crashed) leaves its arguments in :attr:`Held.alone`, to run a task
each, and those it did not reach in :attr:`Held.again`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any

from ..cluster.outcomes import failure_of
from ..cluster.tasks import CANCELLED, FINISHED, ResultSlot, TaskRecord
from ..errors import BrokenCeranubisExecutor, ProtocolError
from ..projects.queue_store import Claimed
from ..projects.records import Outcome
from ..projects.rows import encode, error_text
from ..projects.store import DONE_VALUES
from ..wire import protocol as p
from ..wire.batches import NOT_RUN_OUTCOME, ItemOutcome
from .batches import Pace


@dataclass(frozen=True, slots=True)
class HeldTask:
    """A submitted task: the argument it runs, of which project, which attempt."""

    arg_id: int
    project: int
    attempts: int


@dataclass(frozen=True, slots=True)
class HeldBatch:
    """A submitted batch: the arguments it runs (one project's, in order)."""

    claims: tuple[Claimed, ...]
    project: int
    fn_id: int  # the function's own id (its pace), not the batch wrapper's

    def items(self) -> list[HeldTask]:
        """Its arguments as tasks of their own."""
        return [HeldTask(c.arg_id, c.project, c.attempts) for c in self.claims]


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
        self.tasks: dict[int, HeldTask | HeldBatch] = {}  # task id -> its argument(s)
        self.size = 0  # arguments in self.tasks
        self.pace = Pace()
        self.again: list[Claimed] = []  # arguments a batch did not reach: submit again
        self.alone: list[Claimed] = []  # arguments of a failed batch: a task each now
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
        self.size += 1

    def track_batch(self, task_id: int, claims: list[Claimed], fn_id: int) -> None:
        """Know a batch of ``fn_id``'s arguments before it is submitted."""
        self.tasks[task_id] = HeldBatch(tuple(claims), claims[0].project, fn_id)
        self.size += len(claims)

    def _pop(self, task_id: int) -> HeldTask | HeldBatch | None:
        held = self.tasks.pop(task_id, None)
        if held is not None:
            self.size -= 1 if isinstance(held, HeldTask) else len(held.claims)
        return held

    def arrived(self, record: TaskRecord) -> None:
        """Scheduler listener (loop thread): keep a finished task of ours, wake the daemon."""
        if record.task_id in self.tasks:
            self._finished.append(record)
            if not self._wake.is_set():
                self._wake.set()

    def drop(self, task_ids: Iterable[int]) -> list[HeldTask]:
        """Forget tasks (their project was cancelled, or they are released): their
        arguments."""
        dropped: list[HeldTask] = []
        for task_id in task_ids:
            held = self._pop(task_id)
            if isinstance(held, HeldBatch):
                dropped += held.items()
            elif held is not None:
                dropped.append(held)
        return dropped

    def take_reruns(self, projects: set[int] | None = None) -> list[int]:
        """Take the arguments waiting to run again (of ``projects``, or all): their ids."""

        def kept(claim: Claimed) -> bool:
            return projects is not None and claim.project not in projects

        taken = [claim.arg_id for claim in (*self.again, *self.alone) if not kept(claim)]
        self.again = [claim for claim in self.again if kept(claim)]
        self.alone = [claim for claim in self.alone if kept(claim)]
        return taken

    def of_projects(self, projects: set[int]) -> list[int]:
        """Ids of the tasks of these projects."""
        return [t for t, held in self.tasks.items() if held.project in projects]

    def projects(self) -> list[int]:
        """The projects of the tasks held now."""
        return sorted({held.project for held in self.tasks.values()})

    def every_project(self) -> list[int]:
        """The projects of everything held: tasks, unwritten rows, arguments to run again."""
        reruns = (claim.project for claim in (*self.again, *self.alone))
        return sorted({*self.projects(), *self.touched, *reruns})

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
            held = self._pop(record.task_id)
            if isinstance(held, HeldBatch):
                self._batch_rows(record, slot, held)
            elif held is not None:
                self._row(record, slot, held)

    def _no_rows(self, slot: ResultSlot, arg_ids: list[int]) -> bool:
        """A task (or batch) that leaves no rows: its project was cancelled (the store
        says so already), or the local node broke (its arguments are given back)."""
        if slot.state == CANCELLED or isinstance(slot.error, CancelledError):
            return True
        if isinstance(slot.error, BrokenCeranubisExecutor):
            self.releases += arg_ids  # another node runs them
            return True
        return False

    def _row(self, record: TaskRecord, slot: ResultSlot, held: HeldTask) -> None:
        if self._no_rows(slot, [held.arg_id]):
            return
        error = slot.error
        started = record.started + self.clock if record.started else None
        finished = record.finished + self.clock if record.finished else None
        if record.started and record.finished:
            self.pace.note(record.fn_id, record.finished - record.started)
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

    def _batch_rows(self, record: TaskRecord, slot: ResultSlot, batch: HeldBatch) -> None:
        """A row per argument of a finished batch; a batch that failed as a whole (or
        whose outcomes are not a list of one per argument) runs again a task each."""
        if self._no_rows(slot, [claim.arg_id for claim in batch.claims]):
            return
        value = slot.value
        if slot.error is not None or not isinstance(value, list) or len(value) != len(batch.claims):
            self.alone += batch.claims
            return
        spent, ran = 0.0, 0
        for claim, outcome in zip(batch.claims, value, strict=True):
            if outcome == NOT_RUN_OUTCOME:
                self.again.append(claim)
                continue
            self._item_row(record, HeldTask(claim.arg_id, claim.project, claim.attempts), outcome)
            if _well_formed(outcome):
                spent, ran = spent + outcome[4] - outcome[3], ran + 1
        if ran:
            self.pace.note(batch.fn_id, spent / ran)

    def _item_row(self, record: TaskRecord, held: HeldTask, outcome: ItemOutcome) -> None:
        self.touched.add(held.project)
        if not _well_formed(outcome):
            self.fail(held, f"its outcome came back malformed: {str(outcome)[:200]}")
            return
        status, blob, output, started, finished = outcome
        if status == p.OK and not output:
            self.done_values += (held.arg_id, blob, self.host, held.attempts, started, finished)
        elif status == p.OK:
            self.outcomes.append(Outcome(held.arg_id, "done", blob, None, self.host,
                                         held.attempts, started, finished, output))  # fmt: skip
        else:
            self.fail(held, _failure_text(record, self.host, status, blob), started, finished,
                      output or "")  # fmt: skip

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

    def forget_all(self) -> list[int]:
        """Forget every task, unwritten row and argument waiting to run again (none of
        them may reach the store): the ids of the tasks to stop."""
        task_ids = list(self.tasks)
        self.drop(task_ids)
        self.take_reruns()
        self.outcomes.clear()
        self.done_values.clear()
        self.releases.clear()
        self.touched.clear()
        return task_ids

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


def _well_formed(outcome: Any) -> bool:
    """An argument's outcome as ``wire.batches`` makes them."""
    return (
        type(outcome) is tuple
        and len(outcome) == 5
        and type(outcome[0]) is int
        and type(outcome[1]) is bytes
        and (outcome[2] is None or type(outcome[2]) is str)
        and all(type(t) is float for t in outcome[3:])
    )


def _failure_text(record: TaskRecord, host: str, status: int, blob: bytes) -> str:
    """What a batch's argument that failed stores: what a task of its own would."""
    if status == p.RAISED and blob:
        result = p.Result(record.task_id, status, blob[0], blob[1:])
    elif status == p.UNPICKLABLE:
        result = p.Result(record.task_id, status, p.PICKLE, blob)
    else:
        return f"its outcome came back malformed (status {status})"
    try:
        failure = failure_of(record.host or host, record, result)
    except ProtocolError as garbage:
        return f"its outcome came back malformed: {garbage}"
    return error_text(failure) if failure is not None else "no result"


__all__ = ["Held", "HeldBatch", "HeldTask"]
