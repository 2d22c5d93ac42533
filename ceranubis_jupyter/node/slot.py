"""The slot a worker and its supervisor share: which task runs, since when, and what the
worker does with the node's lent input. The supervisor reads it when the worker dies (to
blame the right task, and to know whether the node's input stream is still whole) and to
time tasks out.

Stdlib only: shipped to bare hosts with the node (see ``bootstrap``).
"""

from __future__ import annotations

import mmap
import struct

# Re-reads of the slot to get a consistent (id, start) pair while the worker writes it.
_SLOT_READS = 3


class RunningSlot:
    """Which task a worker runs and since when, in memory shared with its supervisor.

    Created by the supervisor before the fork; the worker writes it around each task, the
    supervisor reads it to blame the right task when the worker dies and to time tasks out.
    """

    _LAYOUT = struct.Struct("=Qd")  # task id (0: between tasks), time.monotonic() at start
    _TASK = struct.Struct("=Q")  # after it: the last task whose result went direct
    _READING_AT = _LAYOUT.size + _TASK.size  # then a byte: 1 reading lent input, 2 holding
    _HELD_AT = _READING_AT + 1  # then the task of the lent frame it holds (see hold)

    def __init__(self) -> None:
        self._area = mmap.mmap(-1, self._HELD_AT + self._TASK.size)

    def set(self, task_id: int, started: float) -> None:
        """Note the task now running (``0`` when none)."""
        self._LAYOUT.pack_into(self._area, 0, task_id, started)

    def get(self) -> tuple[int, float]:
        """``(task_id, started)``, read until two reads agree (the writer never waits)."""
        value = self._LAYOUT.unpack_from(self._area, 0)
        for _ in range(_SLOT_READS):
            again = self._LAYOUT.unpack_from(self._area, 0)
            if again == value:
                break
            value = again
        return int(value[0]), float(value[1])

    def set_delivered(self, task_id: int) -> None:
        """Note the last task whose result the worker wrote straight to the client."""
        self._TASK.pack_into(self._area, self._LAYOUT.size, task_id)

    def delivered(self) -> int:
        """The last task whose result went straight to the client (``0``: none yet)."""
        (task_id,) = self._TASK.unpack_from(self._area, self._LAYOUT.size)
        return int(task_id)

    def set_reading(self, reading: bool) -> None:
        """Note that the worker reads the node's lent input (from its first byte until it
        gave back what it read): bytes it dies with are lost to the node."""
        self._area[self._READING_AT] = reading

    def reading(self) -> bool:
        """Whether the worker was reading the node's lent input (see ``set_reading``)."""
        return self._area[self._READING_AT] == 1

    def hold(self, task_id: int) -> None:
        """Note that the worker read a whole frame of the lent input, with task
        ``task_id`` in it, and runs that task before it gives the frame back."""
        self._TASK.pack_into(self._area, self._HELD_AT, task_id)
        self._area[self._READING_AT] = 2

    def held(self) -> int:
        """The task of the lent frame the worker holds (see ``hold``); ``0``: none."""
        if self._area[self._READING_AT] != 2:
            return 0
        return int(self._TASK.unpack_from(self._area, self._HELD_AT)[0])


__all__ = ["RunningSlot"]
