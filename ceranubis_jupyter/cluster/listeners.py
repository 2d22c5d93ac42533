"""Who hears of each finished task: the scheduler's listeners (project runs, progress).

Added and removed from any thread; called on the loop thread. The list is replaced whole
under a lock (copy on write), so the loop reads it without taking one.
"""

from __future__ import annotations

import logging
import threading

from .tasks import TaskListener, TaskRecord

log = logging.getLogger(__name__)


class Listeners:
    """The callables told of each finished task, in the order they were added."""

    def __init__(self) -> None:
        self._callables: list[TaskListener] = []
        self._lock = threading.Lock()

    def add(self, listener: TaskListener) -> None:
        """Call ``listener(record)`` as each task finishes (once, however often added)."""
        with self._lock:
            if listener not in self._callables:
                self._callables = [*self._callables, listener]

    def remove(self, listener: TaskListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            self._callables = [f for f in self._callables if f != listener]

    def __bool__(self) -> bool:
        """True while any listener is registered."""
        return bool(self._callables)

    def tell(self, record: TaskRecord) -> None:
        """Tell every listener; a broken one is logged and must not stop the others."""
        for listener in self._callables:
            try:
                listener(record)
            except Exception:
                log.exception("task listener failed")
