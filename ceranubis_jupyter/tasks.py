"""The client's record of one task, from submit to result."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from . import protocol as p

# Default times a task is re-run after its worker or node died under it.
DEFAULT_RETRIES = 2


@dataclass
class TaskRecord:
    """A task as the client tracks it, from submit to result."""

    task_id: int
    future: Future[Any]
    fn_id: int
    kind: int
    codec: int
    payload: bytes
    buffers: tuple[p.Buffer, ...] = ()
    priority: int = 0
    timeout: float = 0.0
    retries: int = DEFAULT_RETRIES
    group: str | None = None
    attempts: int = 0
    dispatched: bool = False
    host: str | None = None
    started: float = 0.0
    finished: float = 0.0
    output: str = ""

    def __lt__(self, other: TaskRecord) -> bool:
        return self.task_id < other.task_id

    def as_task(self) -> p.Task:
        return p.Task(
            self.task_id,
            self.fn_id,
            self.kind,
            self.codec,
            self.payload,
            self.buffers,
            self.timeout,
        )


TaskListener = Callable[[TaskRecord], None]
