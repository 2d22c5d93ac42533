"""Transports: how the client starts a node and exchanges bytes with it.

A :class:`Transport` knows one host and starts a node there, returning a :class:`Channel`:
a byte pipe to the node's stdin/stdout plus a way to end it. The scheduler does not care
which kind it got; the local transport (a subprocess over pipes, the embedded default) and
the SSH transport (``ssh.py``) carry the very same protocol.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import socket
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence

from .protocol import Buffer

# How long a node gets to exit after its input closes before it is killed.
EXIT_GRACE_SECONDS = 2.0
# Every node process carries this word in its command line (``kill-strays`` and leak checks).
NODE_MARKER = "ceranubis-node"
# ... followed (as a later word) by ``client=<hostname>:<pid>``, naming the client that
# started it, so ``kill-strays`` can tell the nodes of a dead client.
CLIENT_PREFIX = "client="
# Bytes of a node's stderr kept to explain why it died.
STDERR_TAIL = 4096
_READ_SIZE = 1 << 20
# Queued bytes above which ``drain`` waits, and below which it wakes: bounds client memory
# when a node reads slowly, while keeping a full pipe's worth in hand.
WRITE_HIGH_WATER = 16 << 20
WRITE_LOW_WATER = 4 << 20
# Chunks per writev call (Linux takes up to IOV_MAX = 1024).
_IOV_BATCH = 512


class Channel(ABC):
    """A bidirectional byte stream to one running node."""

    host: str

    @abstractmethod
    async def read(self) -> bytes:
        """Next bytes from the node; ``b""`` at end of stream."""

    @abstractmethod
    def write(self, chunks: Sequence[Buffer]) -> None:
        """Queue bytes for the node (does not block)."""

    @abstractmethod
    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark."""

    @abstractmethod
    async def close(self) -> None:
        """Close the node's input, let it exit, kill it if it lingers."""

    async def abort(self) -> None:
        """Drop the node at once, without waiting for it (it is silent or gone)."""
        await self.close()

    def stderr_tail(self) -> str:
        """The last lines the node wrote to stderr (for error messages)."""
        return ""


class Transport(ABC):
    """Starts nodes on one host."""

    host: str
    workers: int | None = None
    group: str | None = None

    @abstractmethod
    async def start(self) -> Channel:
        """Start a node and return its channel; raises a :class:`HostError` on failure."""


def node_command(python: str) -> list[str]:
    """The command that runs the node from this installation (local transport).

    ``-I`` keeps the user's environment and current directory out of the node.
    """
    boot = (
        f"import sys; sys.path.insert(0, {_package_parent()!r}); "
        "from ceranubis_jupyter.node import main; main()"
    )
    return [python, "-I", "-c", boot, NODE_MARKER, client_identity()]


def client_identity() -> str:
    """The ``client=<hostname>:<pid>`` word that every node of this process carries."""
    return f"{CLIENT_PREFIX}{socket.gethostname()}:{os.getpid()}"


class LocalTransport(Transport):
    """The embedded default: a node as a subprocess of the client, over pipes."""

    def __init__(self, workers: int | None = None, host: str = "local") -> None:
        self.host = host
        self.workers = workers

    async def start(self) -> Channel:
        process = await asyncio.create_subprocess_exec(
            *node_command(sys.executable),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # the kernel's Ctrl-C (SIGINT to its group) is not ours
        )
        return ProcessChannel(self.host, process)


def _take_stdin(process: asyncio.subprocess.Process) -> PipeWriter:
    """Move a subprocess's stdin pipe from asyncio's stream to a :class:`PipeWriter`."""
    assert process.stdin is not None
    fd = os.dup(process.stdin.get_extra_info("pipe").fileno())
    process.stdin.close()  # closes asyncio's descriptor only: ours keeps the pipe open
    return PipeWriter(fd)


def _package_parent() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.dirname(here)


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
        while self._chunks:
            batch = list(itertools.islice(self._chunks, _IOV_BATCH))
            try:
                written = os.writev(self.fd, batch)
            except BlockingIOError:
                break
            except OSError:  # the node is gone; its reader will see EOF
                self._close_now()
                return
            if not self._consume(written):
                break
        self._after_flush()

    def _consume(self, written: int) -> bool:
        """Drop ``written`` bytes from the front; ``True`` if a whole batch went out."""
        self.pending -= written
        while written:
            head = self._chunks[0]
            if written < len(head):
                self._chunks[0] = head[written:]
                return False
            written -= len(head)
            self._chunks.popleft()
        return True

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


class ProcessChannel(Channel):
    """A channel to a node subprocess started with stdin, stdout and stderr pipes.

    Its stdin pipe is taken over by a :class:`PipeWriter`, so that writes go out with
    ``writev`` straight from the caller's buffers, never copied into a transport buffer.
    """

    def __init__(self, host: str, process: asyncio.subprocess.Process) -> None:
        self.host = host
        self.process = process
        self.pid = process.pid
        self.stdin = _take_stdin(process)
        self._stderr = bytearray()
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())

    async def read(self) -> bytes:
        assert self.process.stdout is not None
        try:
            return await self.process.stdout.read(_READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    def write(self, chunks: Sequence[Buffer]) -> None:
        self.stdin.write(chunks)

    async def drain(self) -> None:
        await self.stdin.drain()

    async def close(self) -> None:
        self.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), EXIT_GRACE_SECONDS)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        finally:
            self.stdin.abort()
        self._stderr_task.cancel()

    async def abort(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.stdin.abort()
        await self.process.wait()
        self._stderr_task.cancel()

    def stderr_tail(self) -> str:
        return self._stderr.decode("utf-8", "replace").strip()

    async def _collect_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        while chunk := await stream.read(65536):
            self._stderr += chunk
            del self._stderr[:-STDERR_TAIL]
