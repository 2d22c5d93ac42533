"""A worker's side of the node's lent input (the ``lent_input`` fast path; the node's side
is :mod:`.lending`).

A worker that was lent the input (``LendInput``) waits on it and on its own task pipe.
When the client's next frame comes, the worker reads exactly that frame
(:func:`read_frame`: never a byte past it, so the node's stream stays whole). When the
frame is one task of a function the worker has (:func:`lone_task`), it runs that task
first and gives the bytes back (:func:`input_back`, naming the task) once the result is
out, or after ``worker.HOLD_SECONDS`` if the task runs on: the task came client → sshd →
worker and its result went back without waking the node, as an echo's round trip does.
Anything else (a control message, several tasks, an unknown function) it gives back at
once, and the node reads it from the bytes given back, as if from its input. If the node
writes to the task pipe first, the worker gives the input back unread. The worker's slot
says what it does meanwhile (:class:`~.slot.RunningSlot`): reading (should it die then,
what it read dies with it, and the node ends so that the client sends its tasks again;
nothing is lost: the node had nothing else to do, or it would not have lent), or holding
a whole frame whose task it runs (should it die in the task, the node reports the task
crashed and reads on).

Stdlib + dill only: shipped to bare hosts with the node (see ``bootstrap``).
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable

from ..errors import RemoteProtocolError
from ..wire import protocol as p
from ..wire.framing import decode_body

# A frame up to this long is read whole; of a longer one only its header, so that the node
# reads the body (into place, or cut through to a worker: see relay.py).
LENT_FRAME_BYTES = 1 << 16


def wait_for_input(task_fd: int, input_fd: int) -> bool:
    """Block until the client's input or the node's task pipe has bytes; ``True`` when
    only the input has them (news from the node comes first: the input goes back)."""
    ready, _, _ = select.select([task_fd, input_fd], [], [])
    return task_fd not in ready


def read_frame(fd: int) -> bytes:
    """The next frame on ``fd``: whole, or its header only when its body is longer than
    ``LENT_FRAME_BYTES``; fewer bytes when the stream ends first."""
    head = read_exactly(fd, p.HEADER.size)
    if len(head) < p.HEADER.size:
        return head
    _, _, length = p.HEADER.unpack(head)
    if length > LENT_FRAME_BYTES:
        return head
    return head + read_exactly(fd, length)


def read_exactly(fd: int, count: int) -> bytes:
    """``count`` bytes of ``fd`` (fewer at its end), waiting while it has none."""
    parts: list[bytes] = []
    while count > 0:
        try:
            chunk = os.read(fd, count)
        except BlockingIOError:  # the node's input may be non-blocking
            select.select([fd], [], [])
            continue
        if not chunk:
            break
        parts.append(chunk)
        count -= len(chunk)
    return b"".join(parts)


def lone_task(frame: bytes, runnable: Callable[[int], bool]) -> p.Tasks | None:
    """The frame's message when it is a ``Tasks`` of one task whose function is
    ``runnable`` here; else ``None`` (garbage included: the node will say what is wrong)."""
    if len(frame) <= p.HEADER.size:
        return None
    magic, kind, length = p.HEADER.unpack_from(frame)
    body = memoryview(frame)[p.HEADER.size :]
    fn_id = p.lone_task_function(kind, body, length)
    if magic != p.MAGIC or fn_id is None or not runnable(fn_id):
        return None
    try:
        message = decode_body(kind, body)  # (its payload is a view of ``frame``)
    except RemoteProtocolError:
        return None
    return message if isinstance(message, p.Tasks) else None


def input_back(frame: bytes, task_id: int) -> list[p.Buffer]:
    """The frame that gives the node its input back: the bytes read of it, and the task
    among them that the worker runs (``0``: none)."""
    return p.encode(p.Results((p.Result(task_id, p.INPUT_BACK, p.PICKLE, frame),)))


__all__ = [
    "LENT_FRAME_BYTES",
    "input_back",
    "lone_task",
    "read_exactly",
    "read_frame",
    "wait_for_input",
]
