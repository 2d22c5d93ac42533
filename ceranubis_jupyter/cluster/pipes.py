"""Non-blocking pipe ends driven by the event loop, for the local transport.

:class:`PipeWriter` writes a node's stdin with ``writev`` straight from the caller's
buffers; :class:`PipeReader` reads its stdout in 64 KiB reads (asyncio's pipe transport
asks for 256 KiB, which glibc maps and unmaps on every call) and either buffers the bytes
for :meth:`PipeReader.read` or hands them at once to a receiver, so that a result is
handled in the very loop callback that read it.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Callable, Sequence

from ..wire import iov
from ..wire.framing import READ_SIZE
from ..wire.protocol import Buffer

# Queued bytes above which ``drain`` waits, and below which it wakes: bounds client memory
# when a node reads slowly, while keeping a full pipe's worth in hand.
WRITE_HIGH_WATER = 16 << 20
WRITE_LOW_WATER = 4 << 20

Receiver = Callable[[bytes], None]


class PipeReader:
    """Reads a pipe whenever it is readable; ``b""`` marks the end of the stream.

    Until :meth:`set_receiver` is called, what arrives is kept for :meth:`read`; after, it
    goes to the receiver as it arrives (a push: no task switch per read).
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._receiver: Receiver | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self.loop.add_reader(fd, self._on_readable)

    async def read(self) -> bytes:
        """The next bytes that arrived (``b""`` at the end); only before a receiver is set."""
        while not self._chunks and not self._ended:
            self._waiter = self.loop.create_future()
            await self._waiter
        return self._chunks.popleft() if self._chunks else b""

    def unread(self, data: bytes) -> None:
        """Put ``data`` back, to be the next bytes :meth:`read` returns (or the receiver
        gets first)."""
        self._chunks.appendleft(data)

    def set_receiver(self, receiver: Receiver) -> None:
        """Deliver everything from now on to ``receiver``, starting with what is kept."""
        self._receiver = receiver
        while self._chunks:
            receiver(self._chunks.popleft())
        if self._ended:
            receiver(b"")

    def close(self) -> None:
        """Stop reading and close the descriptor."""
        if self.fd < 0:
            return
        self._stop_watching()
        os.close(self.fd)
        self.fd = -1
        self._ended = True
        self._wake()

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # the node is gone
            data = b""
        if not data:
            self._ended = True
            self._stop_watching()
        if self._receiver is not None:
            self._receiver(data)
        elif data:
            self._chunks.append(data)
        self._wake()

    def _stop_watching(self) -> None:
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class PipeWriter:
    """Non-blocking, zero-copy writes to a pipe from the event loop.

    Chunks are kept as memoryviews and written with ``os.writev`` (many frames per
    syscall); whatever the pipe does not take now waits for it to become writable.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        self.pending = 0  # bytes queued
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._watching = False
        self._closing = False
        self._drained: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def write(self, chunks: Sequence[Buffer]) -> None:
        """Queue chunks and write what the pipe takes at once."""
        if self.closed or self._closing:
            return
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            if view:
                self._chunks.append(view)
                self.pending += len(view)
        if not self._watching:
            self._flush()

    async def drain(self) -> None:
        """Wait until at most ``WRITE_LOW_WATER`` bytes are queued (or the pipe broke)."""
        while self.pending > WRITE_HIGH_WATER and not self.closed:
            if self._drained is None or self._drained.done():
                self._drained = self.loop.create_future()
            await self._drained

    def close(self) -> None:
        """Close once everything queued is written (at once if the pipe is broken)."""
        self._closing = True
        if not self._chunks:
            self._close_now()

    def _flush(self) -> None:
        try:
            self.pending -= iov.write_some(self.fd, self._chunks)
        except OSError:  # the node is gone; its reader will see EOF
            self._close_now()
            return
        self._after_flush()

    def _after_flush(self) -> None:
        want = bool(self._chunks)
        if want != self._watching:
            if want:
                self.loop.add_writer(self.fd, self._flush)
            else:
                self.loop.remove_writer(self.fd)
            self._watching = want
        if self.pending <= WRITE_LOW_WATER:
            self._wake_drainers()
        if self._closing and not want:
            self._close_now()

    def abort(self) -> None:
        """Close now, dropping whatever is still queued."""
        self._close_now()

    def _wake_drainers(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _close_now(self) -> None:
        if self.closed:
            return
        if self._watching:
            self.loop.remove_writer(self.fd)
            self._watching = False
        self._chunks.clear()
        self.pending = 0
        os.close(self.fd)
        self.fd = -1
        self._wake_drainers()
