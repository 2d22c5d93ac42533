"""One exit path for the package's module-level state, in a fixed order.

Each layer that keeps state for the life of the process (live project runs, the magics'
executors, every live executor, the shared stores) registers a hook for its :class:`Stage`
here instead of calling :func:`atexit.register` itself; one ``atexit`` hook then runs the
stages in order, whatever order the modules were imported in::

    RUNS       live project runs write what they know; the rest stays pending to resume
    POOLS      the magics' executors shut down
    EXECUTORS  every other live executor finishes the work it was given, then shuts down
    STORES     the shared store connections close

Stdlib only; it imports nothing of the package.
"""

from __future__ import annotations

import atexit
import enum
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("ceranubis")


class Stage(enum.IntEnum):
    """When a hook runs at exit: lower stages first."""

    RUNS = 1
    POOLS = 2
    EXECUTORS = 3
    STORES = 4


_hooks: dict[Stage, list[Callable[[], None]]] = {stage: [] for stage in Stage}
_lock = threading.Lock()


def on_exit(stage: Stage, hook: Callable[[], None]) -> None:
    """Run ``hook()`` at interpreter exit, in ``stage`` (hooks of a stage in their order)."""
    with _lock:
        if hook not in _hooks[stage]:
            _hooks[stage].append(hook)


def run_exit_hooks() -> None:
    """Run every registered hook, stage by stage; a failing hook does not stop the others."""
    with _lock:
        plan = [(stage, list(_hooks[stage])) for stage in sorted(Stage)]
    for stage, hooks in plan:
        for hook in hooks:
            try:
                hook()
            except Exception:  # at exit, best effort: nodes also die when our pipes close
                log.exception("exit hook %s of stage %s failed", hook, stage.name)


atexit.register(run_exit_hooks)

__all__ = ["Stage", "on_exit", "run_exit_hooks"]
