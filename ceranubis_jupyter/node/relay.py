"""Cut-through: a large one-task frame passed on to an idle worker while it still arrives.

The worker receives the task's bytes as the client's come in, instead of after the last
one: its copy overlaps the transfer. The node keeps the whole frame as well (it re-queues
the task if the worker dies), and adds the task to the worker's list only when the frame
is complete, before the worker can have all of it.

Stdlib + dill only: shipped to bare hosts with the node (see ``bootstrap``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..wire import protocol as p
from .pool import WorkerState

# Picks the worker for a relayed task of a function: an idle one that has the function
# (shipped to it now if need be), or ``None`` to take the usual way.
Picker = Callable[[int], WorkerState | None]


@dataclass
class _Frame:
    """The frame being relayed."""

    target: WorkerState | None  # None once that worker died: the task is queued as usual
    body: memoryview
    sent: int  # body bytes handed to the worker's outbox so far


class Relay:
    """The supervisor's cut-through of the large frame its connection is receiving."""

    def __init__(self, conn: p.Connection, pick: Picker) -> None:
        self._conn = conn
        self._pick = pick
        self._frame: _Frame | None = None

    @property
    def active(self) -> bool:
        """Whether a frame is being relayed (its ``Tasks`` end it: see :meth:`end`)."""
        return self._frame is not None

    @property
    def target(self) -> WorkerState | None:
        """The worker whose task pipe is inside a relayed frame: nothing else may go in."""
        return self._frame.target if self._frame is not None else None

    def pass_on(self) -> None:
        """Hand the worker what has come of a large one-task frame since the last call."""
        progress = self._conn.large_in_progress()
        if progress is None:
            return
        kind, body, filled = progress
        frame = self._frame
        if frame is None:
            frame = self._frame = self._begin(kind, body, filled)
            if frame is None:
                return
        target = frame.target
        if target is not None and filled > frame.sent:
            target.outbox.add([body[frame.sent : filled]])
            frame.sent = filled
            target.outbox.flush()

    def _begin(self, kind: int, body: memoryview, filled: int) -> _Frame | None:
        fn_id = p.lone_task_function(kind, body, filled)
        target = None if fn_id is None else self._pick(fn_id)
        if target is None:
            return None  # the usual way: queued once complete, dispatched in turn
        target.outbox.add([p.frame_header(kind, len(body))])
        return _Frame(target, body, 0)

    def forget(self, state: WorkerState) -> None:
        """``state`` died: the relayed task is queued as usual once its frame is complete."""
        if self._frame is not None and self._frame.target is state:
            self._frame.target = None

    def end(self) -> None:
        """The frame is complete (the caller counted its task as the target's, if any): send
        the target the rest, and let go of the frame."""
        frame, self._frame = self._frame, None
        assert frame is not None
        if frame.target is not None:
            frame.target.outbox.add([frame.body[frame.sent :]])
            frame.target.outbox.flush()
