"""The node's side of the ``lent_input`` fast path: when it lends its input to a worker,
and how it takes the input back (the worker's side, and the whole exchange: :mod:`.borrow`).

The node lends only when it has nothing to do (nothing queued, relayed, half read or on
its way) and every worker is idle; it stops watching its input until the worker gives it
back. The bytes given back are read as if from the input, in order, before the input is
read again; the task the worker took among them is held as that worker's, so its timeout,
a cancel or the worker's death are handled as for any task the node gave it. (A worker
gives a lone task's frame back once the task's result is out, or after
``worker.HOLD_SECONDS``: the node is deaf that long at most.)

Stdlib only: shipped to bare hosts with the node (see ``bootstrap``).
"""

from __future__ import annotations

import selectors
from collections.abc import Iterable, Sequence

from ..wire import protocol as p
from .pool import WorkerState

# The node's last words when a worker died reading its lent input (see Lender.forget).
INPUT_LOST = (
    "a worker died while it read the node's input; what it had read is lost with it, so "
    "the node ends and the client sends its tasks again"
)


class Lender:
    """Whether, and to which worker, the node's input is lent."""

    def __init__(self, selector: selectors.BaseSelector, input_fd: int) -> None:
        self._selector = selector
        self._input_fd = input_fd
        self.enabled = False  # the client's Configure turns it on (with direct writes)
        self.to: WorkerState | None = None  # the worker that has the input now
        self._taken: tuple[WorkerState, int] | None = None  # (worker, task) given back
        # Given back empty: the input ended, or the worker had news from the node first.
        # Either way the node reads the input itself before it lends it again (else it
        # would lend an ended input over and over).
        self._unread = False

    def may_lend(self) -> bool:
        """Whether the input could be lent now (on, not lent, not waiting to be read)."""
        return self.enabled and self.to is None and not self._unread

    def lend(self, workers: Iterable[WorkerState]) -> bool:
        """Lend the input to the first worker if every one is idle (the caller checked
        that the node has nothing to do); ``True`` when lent now."""
        if not self.may_lend():
            return False
        states = list(workers)
        if not states or any(state.tasks or state.outbox for state in states):
            return False
        self._selector.unregister(self._input_fd)
        states[0].outbox.add(p.encode(p.LendInput()))
        states[0].outbox.flush()
        self.to = states[0]
        return True

    def back(self, state: WorkerState, back: p.Result) -> None:
        """``state`` gave the input back (its ``INPUT_BACK`` result, whose ``task_id`` is
        the task it runs of the bytes it read): the node reads the input again."""
        if self.to is state:
            self._watch_input()
        self._taken = (state, back.task_id) if back.task_id else None
        self._unread = not back.payload

    def input_read(self) -> None:
        """The node read its input itself."""
        self._unread = False

    def taken(self, tasks: Sequence[p.Task]) -> WorkerState | None:
        """The worker that runs ``tasks`` already (it read them from the lent input)."""
        taken, self._taken = self._taken, None
        if taken is not None and len(tasks) == 1 and tasks[0].task_id == taken[1]:
            return taken[0]
        return None

    def forget(self, state: WorkerState, running: int) -> tuple[bool, int]:
        """``state`` died, running task ``running`` (by its slot). Returns whether the
        input may have lost bytes with it (so that its stream can no longer be trusted),
        and the task of a lent frame it held and died running (``0``: none), which the
        node never held. Otherwise, if it had the input, the node reads it again.

        Bytes are lost when it died in the middle of reading a frame, or holding a whole
        one (see ``RunningSlot.hold``) whose task ended without its result reaching the
        client. A held frame whose task it died running, or whose result reached the
        client, leaves the stream whole.
        """
        if self.to is not state:
            return False, 0
        slot = state.slot
        held = slot.held()
        if slot.reading() or (held and held != running and slot.delivered() != held):
            return True, 0
        self._watch_input()
        return False, held if held == running else 0

    def _watch_input(self) -> None:
        self.to = None
        self._selector.register(self._input_fd, selectors.EVENT_READ, None)


__all__ = ["INPUT_LOST", "Lender"]
