"""Where a test's tasks ran, and how often, through the executor's public seams.

``NodeExecutor.task_id_of`` names a future's task; a scheduler listener keeps each
finished task's record (it runs before the future is set, so a done future's record is
always there); ``Scheduler.in_flight_threadsafe`` says which node holds a running one.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from ceranubis_jupyter.cluster.executor import NodeExecutor
from ceranubis_jupyter.cluster.tasks import TaskRecord


class TaskRecords:
    """The records of an executor's tasks, by their futures, from the moment it is made.

    Use it as a context manager around a shared executor: it stops listening (and drops
    the records it kept, results included) on exit.
    """

    def __init__(self, executor: NodeExecutor) -> None:
        self.executor = executor
        self.finished: dict[int, TaskRecord] = {}
        executor.scheduler.add_listener(self._on_finished)

    def __enter__(self) -> TaskRecords:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.executor.scheduler.remove_listener(self._on_finished)
        self.finished.clear()

    def _on_finished(self, record: TaskRecord) -> None:
        self.finished[record.task_id] = record

    def task_id(self, future: Future[Any]) -> int:
        """The future's task id (it must come from this executor's ``submit``)."""
        task_id = self.executor.task_id_of(future)
        assert task_id is not None, f"{future} is not a future of this executor"
        return task_id

    def of(self, future: Future[Any]) -> TaskRecord:
        """The record of a finished future's task."""
        assert future.done(), "the task has not finished"
        return self.finished[self.task_id(future)]

    def host(self, future: Future[Any]) -> str | None:
        """Where the future's task runs or ran; ``None`` while it waits for a node."""
        return self.hosts([future])[0]

    def hosts(self, futures: Iterable[Future[Any]]) -> list[str | None]:
        """:meth:`host` of each future, from one snapshot of the tasks on nodes."""
        in_flight = self.executor.scheduler.in_flight_threadsafe()
        on_nodes = {task.task_id: task.host for task in in_flight}
        found: list[str | None] = []
        for future in futures:
            task_id = self.task_id(future)
            if task_id in on_nodes:
                found.append(on_nodes[task_id])
            else:  # finished (its record is kept) or still waiting for a node
                found.append(self.of(future).host if future.done() else None)
        return found
