"""Bytes a node owes a file descriptor: its client's output, or a worker's task pipe.

The node never blocks on a write: what a pipe does not take now waits here, written out
as the descriptor becomes writable (many chunks per ``writev``). Stdlib only: shipped to
bare hosts with the node (see ``bootstrap``).
"""

from __future__ import annotations

import contextlib
import fcntl

from ..wire import iov
from ..wire import protocol as p
from . import worker

# Pipe capacity asked of the kernel (Linux caps it at /proc/sys/fs/pipe-max-size, 1 MiB by
# default): 16x fewer syscalls and wake-ups for big payloads than the 64 KiB default.
PIPE_SIZE = 1 << 20


class Outbox:
    """Pending bytes for a non-blocking file descriptor.

    With a :class:`~.worker.ClientPipe` (the output shared with the workers), the lock is
    held from the first byte written to the last, so a worker's frame never lands inside
    one of ours; while a worker holds it, our bytes wait (``waiting_for_lock``).
    """

    def __init__(self, fd: int, shared: worker.ClientPipe | None = None) -> None:
        self.fd = fd
        self.shared = shared
        self.watched = False  # registered with the selector for writability
        self.broken = False  # the reader is gone: what was pending is dropped
        self._locked = False
        self._chunks: iov.Chunks = iov.Chunks()

    def __bool__(self) -> bool:
        return bool(self._chunks)

    @property
    def waiting_for_lock(self) -> bool:
        return bool(self._chunks) and self.shared is not None and not self._locked

    def discard(self) -> None:
        """Drop what is pending (its descriptor is being closed)."""
        self._chunks.clear()

    def add(self, chunks: list[p.Buffer]) -> None:
        self._chunks.extend(view for chunk in chunks if (view := memoryview(chunk).cast("B")))

    def flush(self) -> None:
        """Write as much as the descriptor takes now (many chunks per ``writev``)."""
        if self.shared is None:
            self._write()
        elif self._chunks and (self._locked or self.shared.try_lock()):
            self._locked = True
            self._write()
            if not self._chunks:
                self.shared.unlock()
                self._locked = False

    def _write(self) -> None:
        try:
            iov.write_some(self.fd, self._chunks)
        except BrokenPipeError:  # a worker died (its end is seen soon) or the client
            self.broken = True
            self._chunks.clear()


def grow_pipe(fd: int) -> None:
    """Ask for a ``PIPE_SIZE`` pipe buffer; a no-op where that is not possible."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:  # pragma: no cover - not Linux
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, set_size, PIPE_SIZE)
