"""Transports: how the client starts a node and exchanges bytes with it.

A :class:`Transport` knows one host and starts a node there, returning a :class:`Channel`:
a byte pipe to the node's stdin/stdout plus a way to end it. The scheduler does not care
which kind it got; the local transport (a subprocess over pipes, the embedded default) and
the SSH transport (``ssh.py``) carry the very same protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
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


def _package_parent() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.dirname(here)


class ProcessChannel(Channel):
    """A channel over an asyncio subprocess's pipes."""

    def __init__(self, host: str, process: asyncio.subprocess.Process) -> None:
        self.host = host
        self.process = process
        self.pid = process.pid
        self._stderr = bytearray()
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())

    async def read(self) -> bytes:
        assert self.process.stdout is not None
        try:
            return await self.process.stdout.read(_READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    def write(self, chunks: Sequence[Buffer]) -> None:
        assert self.process.stdin is not None
        stdin = self.process.stdin
        if stdin.is_closing():
            return
        for chunk in chunks:
            stdin.write(chunk)  # type: ignore[arg-type]

    async def drain(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(ConnectionError, OSError):
            await self.process.stdin.drain()

    async def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), EXIT_GRACE_SECONDS)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        self._stderr_task.cancel()

    async def abort(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
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
