"""Every error ceranubis raises, in one place.

::

    CeranubisError
    ├── ConfigError(CeranubisError, ValueError)      bad host spec / option / value
    │   └── ConfigTypeError(ConfigError, TypeError)  an argument of the wrong type
    ├── ProtocolError ─ LocalProtocolError | RemoteProtocolError ─ VersionMismatch
    ├── HostError(.host) ─ HostUnreachable | HostKeyError | AuthError
    │                     | BootstrapError | HostVersionMismatch | NodeLost
    ├── TaskError(.host, .task_id) ─ WorkerCrashed | TaskTimeout | DependencyError
    │                                 | UnpicklableError(TaskError, ConfigError)
    ├── StoreError
    └── BrokenCeranubisExecutor(CeranubisError, BrokenExecutor)

Messages are lower-case, name the host or task, and say what to do next.
This module is stdlib-only: the node imports it too.
"""

from __future__ import annotations

import signal
from concurrent.futures import BrokenExecutor
from concurrent.futures import TimeoutError as FuturesTimeoutError


class CeranubisError(Exception):
    """Base class of every error raised by ceranubis_jupyter."""


class ConfigError(CeranubisError, ValueError):
    """A bad host spec, option or argument given by the user."""


class ConfigTypeError(ConfigError, TypeError):
    """An argument of the wrong type (a string for a count, a non-callable for a function).

    A ``TypeError``, as the standard library raises for it, and a :class:`ConfigError`, as
    every other mistake in what the user passed.
    """


class ProtocolError(CeranubisError):
    """The wire protocol was broken."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame or message."""


class VersionMismatch(RemoteProtocolError):
    """The node runs a protocol or Python version the client cannot work with."""


class HostError(CeranubisError):
    """Something went wrong with one host; other hosts are not affected.

    ``transient`` errors (a lost connection) are worth retrying; the others (a refused
    host key, a missing python) need the user to fix something first.
    """

    transient = True

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.reason = message


class FileSyncError(HostError):
    """Data files could not be synced to, or fetched from, a host (names host and file)."""

    transient = False


class HostUnreachable(HostError):
    """The host could not be reached (DNS, refused, timed out)."""


class HostKeyError(HostError):
    """The host's key is unknown or has changed; we never connect without checking it."""

    transient = False


class AuthError(HostError):
    """The host refused our credentials."""

    transient = False


class BootstrapError(HostError):
    """The node could not be started on the host (no python, old python, no disk)."""

    transient = False


class HostVersionMismatch(HostError):
    """A host's Python or protocol version cannot work with the client's."""

    transient = False


class NodeLost(HostError):
    """A running node went away (EOF, heartbeat silence, garbage on the wire)."""


class NoHostsAvailable(CeranubisError):
    """None of the hosts given could be used; carries each host's error."""

    def __init__(self, errors: list[HostError], what: str = "no host could be used") -> None:
        lines = "".join(f"\n  - {error}" for error in errors)
        super().__init__(f"{what}:{lines}" if errors else what)
        self.errors = errors


class TaskError(CeranubisError):
    """A task failed for a reason other than an exception raised by the user's function."""

    def __init__(self, message: str, *, host: str | None = None, task_id: int | None = None):
        super().__init__(message)
        self.host = host
        self.task_id = task_id


class WorkerCrashed(TaskError):
    """The worker process running a task died (signal, ``os._exit``, out of memory)."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        task_id: int | None = None,
        exitcode: int | None = None,
    ) -> None:
        super().__init__(message, host=host, task_id=task_id)
        self.exitcode = exitcode


class TaskTimeout(TaskError, FuturesTimeoutError):
    """A task ran longer than its timeout; its worker was killed and replaced."""


class DependencyError(TaskError):
    """A task did not run because a future it was given as an argument failed.

    Its ``__cause__`` is that input's own exception (the original type, with the remote
    traceback as *its* cause); ``input_task_id`` names the input task.
    """

    def __init__(self, message: str, *, task_id: int | None = None, input_task_id: int = 0):
        super().__init__(message, task_id=task_id)
        self.input_task_id = input_task_id


class UnpicklableError(TaskError, ConfigError):
    """An argument, a function or a result could not be serialized.

    Also a :class:`ConfigError`: before anything runs it is the user's input that will not
    pickle (``submit``, ``map`` and a project's commit raise the same one for it).
    """


class TaskTooLarge(TaskError, ConfigError):
    """A task's serialized arguments do not fit in one frame (``max_data_frame``)."""


class StoreError(CeranubisError):
    """The project store is unreachable, corrupt, or refused an operation."""


class BrokenCeranubisExecutor(CeranubisError, BrokenExecutor):
    """The executor can no longer run tasks (every host is gone)."""


def describe_exit(exitcode: int) -> str:
    """Name how a process ended: ``SIGKILL(-9)`` for a signal, ``exit code 3`` otherwise."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"{name}({exitcode})"
    return f"exit code {exitcode}"


def crash_advice(exitcode: int) -> str:
    """A hint on what to check after a worker died this way."""
    if exitcode == -signal.SIGKILL:
        return "check the host's memory (the OOM killer sends SIGKILL)"
    if exitcode == -signal.SIGSEGV:
        return "the task crashed the interpreter (a bug in native code?)"
    return "the task ended its process; avoid os._exit and sys.exit in tasks"


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a node; set as the ``__cause__``.

    Its text names the host and task and shows the user's own lines.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text
