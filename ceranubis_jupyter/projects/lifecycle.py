"""A project run's life: its states, the events that move it, and the one table of moves.

:class:`Lifecycle` holds a run's :class:`RunState` and changes it only in
:meth:`Lifecycle.on`, by :data:`TRANSITIONS`; a pair of state and event that the table does
not list cannot happen, so meeting one is a bug and raises. ``run.py`` asks the state what
to do (submit? cancel the tasks? stop now? write the final state?); nothing else in a run
is a flag of its life.

The main paths (the table has every move)::

    STARTING ──CREATED──► RUNNING ──CANCEL──► CANCELLING ───┐
       │                    ├──CLAIM_LOST──► ORPHANED ──────┤
       │                    └──EXIT──► EXITING ─────────────┼──END──► FINISHED
       └──ABANDON──► ABANDONED ─────────────────────────────┘
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable


class RunState(enum.Enum):
    """Where a run is in its life (see ``TRANSITIONS`` for the moves)."""

    STARTING = "starting"  # submitting; the project's insert is still open: write nothing
    RUNNING = "running"  # submitting, collecting, writing
    CANCELLING = "cancelling"  # its tasks are cancelled, what finished is written
    ORPHANED = "orphaned"  # another process owns the project now: write results only
    EXITING = "exiting"  # the interpreter exits: write what is known, leave the rest pending
    ABANDONED = "abandoned"  # the project's insert failed: cancel its tasks, write nothing
    FINISHED = "finished"  # the run thread ended


class RunEvent(enum.Enum):
    """What moves a run."""

    CREATED = "created"  # the project's insert committed: the ids are known
    CANCEL = "cancel"  # asked here, or seen in a heartbeat (another process asked)
    CLAIM_LOST = "claim lost"  # a heartbeat found the project removed or resumed elsewhere
    EXIT = "exit"  # the interpreter exits
    ABANDON = "abandon"  # the project's insert failed
    END = "end"  # the run thread ends


_S, _E = RunState, RunEvent
# Every move a run can make. A pair not listed cannot happen (a heartbeat needs the ids, an
# insert fails before it commits, ...): meeting one is a bug, and raises.
TRANSITIONS: dict[tuple[RunState, RunEvent], RunState] = {
    (_S.STARTING, _E.CREATED): _S.RUNNING,
    (_S.STARTING, _E.CANCEL): _S.CANCELLING,
    (_S.STARTING, _E.EXIT): _S.EXITING,
    (_S.STARTING, _E.ABANDON): _S.ABANDONED,
    (_S.RUNNING, _E.CANCEL): _S.CANCELLING,
    (_S.RUNNING, _E.CLAIM_LOST): _S.ORPHANED,
    (_S.RUNNING, _E.EXIT): _S.EXITING,
    (_S.CANCELLING, _E.CREATED): _S.CANCELLING,  # cancelled before the commit: still writes
    (_S.CANCELLING, _E.CANCEL): _S.CANCELLING,
    (_S.CANCELLING, _E.CLAIM_LOST): _S.ORPHANED,
    (_S.CANCELLING, _E.EXIT): _S.CANCELLING,  # a cancel under way ends as one
    (_S.CANCELLING, _E.ABANDON): _S.ABANDONED,
    (_S.ORPHANED, _E.CANCEL): _S.ORPHANED,  # not ours to cancel any more
    (_S.ORPHANED, _E.CLAIM_LOST): _S.ORPHANED,
    (_S.ORPHANED, _E.EXIT): _S.ORPHANED,  # not ours to mark stopped
    (_S.EXITING, _E.CREATED): _S.EXITING,
    (_S.EXITING, _E.CANCEL): _S.EXITING,  # too late: what is left stays pending
    (_S.EXITING, _E.CLAIM_LOST): _S.ORPHANED,
    (_S.EXITING, _E.EXIT): _S.EXITING,
    (_S.EXITING, _E.ABANDON): _S.ABANDONED,
    (_S.ABANDONED, _E.CANCEL): _S.ABANDONED,
    (_S.ABANDONED, _E.EXIT): _S.ABANDONED,
    (_S.FINISHED, _E.CREATED): _S.FINISHED,  # the run thread failed before the commit
    (_S.FINISHED, _E.CANCEL): _S.FINISHED,
    (_S.FINISHED, _E.EXIT): _S.FINISHED,
    (_S.FINISHED, _E.ABANDON): _S.FINISHED,
    **{(state, _E.END): _S.FINISHED for state in RunState if state is not _S.FINISHED},
}
# States in which the run submits more tasks.
SUBMITTING = frozenset({_S.STARTING, _S.RUNNING})
# States whose entry cancels the run's unfinished tasks (and a cancelled task's arguments
# are then ``cancelled``, not left pending).
CANCELLED = frozenset({_S.CANCELLING, _S.ORPHANED, _S.ABANDONED})
# States in which the run thread stops after the current cycle, settled or not.
ENDS_AT_ONCE = frozenset({_S.EXITING, _S.ABANDONED})


class Lifecycle:
    """A run's state, changed only by :meth:`on`; ``wake`` is set after every event (the
    run thread acts on the state in its next cycle)."""

    def __init__(self, state: RunState, wake: threading.Event) -> None:
        self.state = state
        self._wake = wake
        self._lock = threading.Lock()  # events come from the kernel, run and exit threads

    def on(self, event: RunEvent) -> bool:
        """Move on ``event``; returns whether the state changed.

        Raises:
            RuntimeError: ``event`` cannot happen in this state (a bug).
        """
        with self._lock:
            before = self.state
            after = TRANSITIONS.get((before, event))
            if after is None:
                raise RuntimeError(f"project run: {event.name} cannot happen when {before.name}")
            self.state = after
        self._wake.set()
        return after is not before


class Cycles:
    """A run thread's cycles, counted so a flush (:meth:`~ceranubis_jupyter.projects.run.
    ProjectRun.flush`) can wait for a write."""

    def __init__(self) -> None:
        self.started = self.ended = 0
        self._write_asked = False  # a flush wants a write before the flush period is over
        self._condition = threading.Condition()

    def begin(self) -> None:
        with self._condition:
            self.started += 1

    def end(self) -> None:
        with self._condition:
            self.ended += 1
            self._condition.notify_all()

    def take_write_request(self) -> bool:
        """True (once) when a flush asked for a write."""
        asked, self._write_asked = self._write_asked, False
        return asked

    def wait_for_write(
        self, wake: threading.Event, over: Callable[[], bool], timeout: float
    ) -> None:
        """Ask for a write in the next cycle and wait until that cycle ended (or
        ``over()``), at most ``timeout`` seconds."""
        with self._condition:
            target = self.started + 1
            self._write_asked = True
            wake.set()
            self._condition.wait_for(lambda: self.ended >= target or over(), timeout)

    def release(self) -> None:
        """The run ended: let every waiter go."""
        with self._condition:
            self._condition.notify_all()


__all__ = [
    "CANCELLED",
    "ENDS_AT_ONCE",
    "SUBMITTING",
    "TRANSITIONS",
    "Cycles",
    "Lifecycle",
    "RunEvent",
    "RunState",
]
