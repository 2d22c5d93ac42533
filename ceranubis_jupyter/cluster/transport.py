"""Transports: how the client starts a node and exchanges bytes with it.

A :class:`Transport` knows one host and starts a node there, returning a :class:`Channel`:
a byte pipe to the node's stdin/stdout plus a way to end it. The scheduler does not care
which kind it got; the local transport (a subprocess over pipes, the embedded default) and
the SSH transport (``ssh.py``) carry the very same protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import site
import socket
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from ..wire.protocol import Buffer
from .pipes import PipeReader, PipeWriter, Receiver

# How long a node gets to exit after its input closes before it is killed.
EXIT_GRACE_SECONDS = 2.0
# Every node process carries this word in its command line (``kill-strays`` and leak checks).
NODE_MARKER = "ceranubis-node"
# ... followed (as a later word) by ``client=<hostname>:<machine id>:<pid>``, naming the
# client that started it, so ``kill-strays`` can tell the nodes of a dead client.
CLIENT_PREFIX = "client="
# This machine's id, under ``$XDG_CACHE_HOME`` (or ``~/.cache``): random, made once, private
# (0600). Two machines may share a hostname; they never share this id (unless they share
# the cache directory too, e.g. one NFS home; then their hostnames must differ).
MACHINE_ID_PATH = ("ceranubis", "machine-id")
# Hex digits of a machine id: 128 random bits.
MACHINE_ID_LENGTH = 32
# Bytes of a node's stderr kept to explain why it died.
STDERR_TAIL = 4096


class Channel(ABC):
    """A bidirectional byte stream to one running node."""

    host: str
    # True when ``write`` may be called from another thread while the loop thread sleeps
    # (it only writes to a descriptor and never schedules loop callbacks).
    direct_writes: bool = False

    @abstractmethod
    async def read(self) -> bytes:
        """Next bytes from the node; ``b""`` at end of stream (until a receiver is set)."""

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

    @abstractmethod
    def set_receiver(self, receiver: Receiver) -> None:
        """From now on, call ``receiver`` with each chunk as it arrives (``b""`` at the
        end), starting with what :meth:`read` has not returned yet."""

    def stderr_tail(self) -> str:
        """The last lines the node wrote to stderr (for error messages)."""
        return ""

    def read_fd(self) -> int | None:
        """The descriptor the node's bytes arrive on, read by the loop's reader callback
        (``None``: none such); see ``inline_receive``."""
        return None


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

    ``-I`` keeps the user's environment and current directory out of the node's own
    imports (the standard library, dill and the node code come first, whatever the user's
    path holds). The user's tasks then import whatever the client can by name: the
    client's import path (the notebook's directory, ``PYTHONPATH`` entries, what ``.pth``
    files added) and ``$PYTHONPATH`` as it is now are appended after the node's, and the
    ``.pth`` files of every directory on that path are run as ``site`` runs them (their
    import lines too: editable installs' finders, site hooks), as the client's were.
    """
    boot = (
        f"import sys, site; sys.path.insert(0, {_package_parent()!r}); "
        f"sys.path.extend(p for p in {client_path()!r} if p not in sys.path); "
        f"[site.addsitedir(d) for d in {pth_dirs()!r}]; "
        "from ceranubis_jupyter.node.supervisor import main; main()"
    )
    return [python, "-I", "-c", boot, NODE_MARKER, client_identity()]


def client_path() -> list[str]:
    """This process's import path and ``$PYTHONPATH``, the current directory spelled out."""
    cwd = os.getcwd()
    extra = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    entries = [*sys.path, *(entry for entry in extra if entry)]
    return list(dict.fromkeys(os.path.abspath(entry or cwd) for entry in entries))


def pth_dirs() -> list[str]:
    """The directories of :func:`client_path` that hold ``.pth`` files, but for this
    interpreter's own site-packages, which the node's ``site`` runs itself (a hook must
    not run twice)."""
    own = {os.path.abspath(entry) for entry in site.getsitepackages()}
    found = []
    for entry in client_path():
        if entry in own:
            continue
        with contextlib.suppress(OSError):
            if any(name.endswith(".pth") for name in os.listdir(entry)):
                found.append(entry)
    return found


def client_identity() -> str:
    """The ``client=<hostname>:<machine id>:<pid>`` word that every node of this process
    carries (see :func:`machine_id`)."""
    return f"{CLIENT_PREFIX}{socket.gethostname()}:{machine_id()}:{os.getpid()}"


@functools.lru_cache(maxsize=1)
def machine_id() -> str:
    """This machine's random id (:data:`MACHINE_ID_PATH`), made on first use."""
    path = _machine_id_path()
    with contextlib.suppress(FileNotFoundError):
        known = path.read_text().strip()
        if _is_machine_id(known):
            return known
    return _new_machine_id(path)


def _machine_id_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache, *MACHINE_ID_PATH)


def _is_machine_id(text: str) -> bool:
    return len(text) == MACHINE_ID_LENGTH and not text.strip("0123456789abcdef")


def _new_machine_id(path: Path) -> str:
    """Write a fresh id, unless another process of this machine just did (then use it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = secrets.token_hex(MACHINE_ID_LENGTH // 2)
    fd, draft = tempfile.mkstemp(prefix=".machine-id-", dir=path.parent)  # 0600
    try:
        with open(fd, "w") as out:
            out.write(fresh + "\n")
        try:
            os.link(draft, path)  # atomic, and never replaces an id another process made
        except FileExistsError:
            known = path.read_text().strip()
            if _is_machine_id(known):
                return known
            os.replace(draft, path)  # a damaged file: ours replaces it
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(draft)
    return fresh


class LocalTransport(Transport):
    """The embedded default: a node as a subprocess of the client, over pipes."""

    shares_files = True  # runs in the client's own working directory: no data copy

    def __init__(self, workers: int | None = None, host: str = "local") -> None:
        self.host = host
        self.workers = workers

    async def start(self) -> Channel:
        return await start_process_channel(self.host, node_command(sys.executable))


async def start_process_channel(
    host: str, argv: Sequence[str], *, new_session: bool = True
) -> ProcessChannel:
    """Start ``argv`` with pipes for its stdin, stdout and stderr; returns its channel.

    ``new_session`` keeps the kernel's Ctrl-C (SIGINT to its process group) from it.
    Its stdin and stdout are pipes of ours (not asyncio's streams), written by a
    :class:`PipeWriter` and read by a :class:`PipeReader`.
    """
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=in_read,
            stdout=out_write,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=new_session,
        )
    except BaseException:
        os.close(in_write)
        os.close(out_read)
        raise
    finally:
        os.close(in_read)
        os.close(out_write)
    return ProcessChannel(host, process, in_write, out_read)


def _package_parent() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.dirname(here)


class ProcessChannel(Channel):
    """A channel to a node subprocess started with stdin, stdout and stderr pipes.

    Its stdin is written by a :class:`PipeWriter`, so that writes go out with ``writev``
    straight from the caller's buffers, never copied into a transport buffer.
    """

    direct_writes = True

    def __init__(
        self, host: str, process: asyncio.subprocess.Process, stdin: int, stdout: int
    ) -> None:
        self.host = host
        self.process = process
        self.pid = process.pid
        self.stdin = PipeWriter(stdin)
        self.stdout = PipeReader(stdout)
        self._stderr = bytearray()
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())

    async def read(self) -> bytes:
        return await self.stdout.read()

    def set_receiver(self, receiver: Receiver) -> None:
        self.stdout.set_receiver(receiver)

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
            self.stdout.close()
        self._stderr_task.cancel()

    async def abort(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.stdin.abort()
        self.stdout.close()
        await self.process.wait()
        self._stderr_task.cancel()

    def stderr_tail(self) -> str:
        return self._stderr.decode("utf-8", "replace").strip()

    def read_fd(self) -> int | None:
        return self.stdout.fd if self.stdout.fd >= 0 else None

    async def exited(self) -> int | None:
        """The process's exit status once it and its stderr have ended (``None``: still
        running after ``EXIT_GRACE_SECONDS``); its last words are then in
        :meth:`stderr_tail`."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(self.process.wait(), asyncio.shield(self._stderr_task)),
                EXIT_GRACE_SECONDS,
            )
        return self.process.returncode

    async def _collect_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        while chunk := await stream.read(65536):
            self._stderr += chunk
            del self._stderr[:-STDERR_TAIL]


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
