"""What happened to a task, as the error its future gets (or another try).

::

    p.Result.status ─┬─ OK           the scheduler unpickles the value (unpickled_result
                     │               when that fails) and sets the future
                     ├─ RAISED       the user's own exception, its remote traceback as cause
                     ├─ CRASHED      None (run it again) while attempts ≤ retries, then
                     │               WorkerCrashed
                     ├─ UNPICKLABLE  UnpicklableError (arguments, result or function)
                     ├─ TIMED_OUT    TaskTimeout
                     └─ CANCELLED    CancelledError

    a node lost under a task         None (again) while attempts ≤ retries, then NodeLost
    a node whose messages broke us   NodeLost for the node (node_broke), its tasks re-queued
    no host of the task's group      ConfigError (at submit), NoHostsAvailable (left later)

Functions of the task and what the node said, nothing else: the scheduler decides what to
do with their answer (set the future, re-queue, tell listeners). Each names the host and
the task and says what to do next. A payload that breaks the protocol (a crash report that
is not one, a RAISED payload that is not a remote exception) raises
:class:`~ceranubis_jupyter.errors.RemoteProtocolError` before the task's record is
touched: the link then drops the node and re-queues its tasks, this one included.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import CancelledError
from typing import Any

from ..errors import (
    ConfigError,
    HostError,
    HostVersionMismatch,
    NodeLost,
    NoHostsAvailable,
    ProtocolError,
    RemoteProtocolError,
    RemoteTraceback,
    TaskError,
    TaskTimeout,
    UnpicklableError,
    VersionMismatch,
    WorkerCrashed,
    crash_advice,
    describe_exit,
)
from ..wire import protocol as p
from ..wire.serialize import RemoteException, describe_failure, loads
from .tasks import TaskRecord

log = logging.getLogger("ceranubis")


def failure_of(host: str, record: TaskRecord, result: p.Result) -> BaseException | None:
    """The error for a result that is not ``OK``; ``None`` when the task should run again.

    A crash counts one attempt of ``record``.
    """
    status = result.status
    if status == p.RAISED:
        return user_exception(host, record, result)
    if status == p.CRASHED:
        return _crash(host, record, crash_report(record, result.payload))
    if status == p.UNPICKLABLE:
        text = bytes(result.payload).decode("utf-8", "replace")
        return UnpicklableError(
            f"task {record.task_id} on {host}: {text}", host=host, task_id=record.task_id
        )
    if status == p.TIMED_OUT:
        return TaskTimeout(
            f"task {record.task_id} on {host} ran longer than its timeout of "
            f"{record.timeout:g} s; its worker was killed and replaced",
            host=host,
            task_id=record.task_id,
        )
    return CancelledError(f"task {record.task_id} was cancelled")


def unpickled_result(host: str, record: TaskRecord, error: Exception) -> UnpicklableError:
    """The error for a result that came back but does not unpickle here."""
    return unpickled_result_of(host, record.task_id, error)


def unpickled_result_of(host: str, task_id: int, error: Exception) -> UnpicklableError:
    """:func:`unpickled_result` by task id (for a result unpickled after its record is gone)."""
    return UnpicklableError(
        f"the result of task {task_id} from {host} could not be unpickled here: "
        f"{describe_failure(error)}",
        host=host,
        task_id=task_id,
    )


def user_exception(host: str, record: TaskRecord, result: p.Result) -> BaseException:
    """The exception the user's function raised, with the remote traceback as its cause."""
    try:
        remote: RemoteException = loads(result.codec, result.payload)
    except Exception as error:
        return TaskError(
            f"task {record.task_id} on {host} raised an exception that could not be "
            f"unpickled here: {describe_failure(error)}",
            host=host,
            task_id=record.task_id,
        )
    if not isinstance(remote, RemoteException):
        raise RemoteProtocolError(
            f"the RAISED result of task {record.task_id} is a pickled "
            f"{type(remote).__name__}, not a remote exception"
        )
    header = f"Remote traceback of task {record.task_id} on {host}:"
    cause = RemoteTraceback(remote.format(header))
    exception = remote.exception
    if exception is None:
        exception = TaskError(
            f"task {record.task_id} on {host} raised {remote.type_name}: {remote.message} "
            "(the exception itself could not be pickled)",
            host=host,
            task_id=record.task_id,
        )
    exception.__cause__ = cause
    return exception


def crash_report(record: TaskRecord, payload: p.Buffer) -> dict[str, int]:
    """The ``{"exitcode": int, "pid": int}`` of a CRASHED result, checked.

    Raises:
        RemoteProtocolError: the payload is not such a report.
    """
    try:
        report: Any = json.loads(bytes(payload))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError both are
        raise RemoteProtocolError(
            f"the CRASHED result of task {record.task_id} is not JSON: {error}"
        ) from None
    fields = report.items() if isinstance(report, dict) else ()
    if not fields or not all(type(value) is int for _, value in fields):
        raise RemoteProtocolError(
            f"the CRASHED result of task {record.task_id} is not a crash report "
            f"(a JSON object of integers): {bytes(payload)[:100]!r}"
        )
    checked: dict[str, int] = report
    return checked


def _crash(host: str, record: TaskRecord, info: dict[str, int]) -> WorkerCrashed | None:
    """Count an attempt of a task whose worker died; ``None`` while it has retries left."""
    exitcode = info.get("exitcode", 0)
    record.attempts += 1
    how = describe_exit(exitcode)
    if record.attempts <= record.retries:
        log.warning("[host=%s task=%d] worker died (%s); retrying", host, record.task_id, how)
        return None
    message = (
        f"worker {info.get('pid', '?')} on {host} died with {how} while running "
        f"task {record.task_id} ({record.attempts} attempts); {crash_advice(exitcode)}"
    )
    return WorkerCrashed(message, host=host, task_id=record.task_id, exitcode=exitcode)


def lost_with_node(host: str, record: TaskRecord, possibly_running: bool) -> NodeLost | None:
    """A task whose node went away: ``None`` to run it again, else the error to fail it with.

    Only a task that may have been running counts an attempt; one still queued on the
    node never started.
    """
    record.attempts += possibly_running
    if record.attempts <= record.retries:
        return None
    return NodeLost(
        host, f"task {record.task_id} was lost with its node {record.attempts} times; giving up"
    )


def no_such_group(record: TaskRecord) -> ConfigError:
    """A task submitted for a group that no host of the executor is in."""
    return ConfigError(
        f"task {record.task_id} asks for group {record.group!r} but no host of the executor "
        "is in it; give a host Host(..., group=...)"
    )


def no_host_left(record: TaskRecord, errors: list[HostError]) -> NoHostsAvailable:
    """A waiting task whose group lost its last usable host (``errors``: what they had)."""
    group = record.group
    return NoHostsAvailable(
        errors,
        f"task {record.task_id} needs a host of group {group!r} and none is left "
        "(given up or removed); add one with executor.add_hosts([Host(..., "
        f"group={group!r})]) and submit again",
    )


def node_broke(host: str, error: Exception) -> HostError:
    """The error a node is dropped with when handling what it sent raised ``error``: garbage
    (a malformed frame or result), another protocol version, or a bug. Logs the first and
    the last, which are news to whoever reads the log."""
    if isinstance(error, VersionMismatch):
        return HostVersionMismatch(host, str(error))
    if isinstance(error, ProtocolError):
        kind = type(error).__name__ if isinstance(error, RemoteProtocolError) else "error"
        log.error("[host=%s] %s: %s; dropping the node, its tasks are re-queued", host, kind, error)
        return NodeLost(host, f"sent a malformed frame ({error}); node dropped")
    log.error(
        "[host=%s] unexpected %s while handling its messages; dropping the node, its tasks "
        "are re-queued",
        host,
        type(error).__name__,
        exc_info=error,
    )
    return NodeLost(host, f"handling its messages failed ({type(error).__name__}: {error})")
