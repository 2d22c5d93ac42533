"""A worker process: runs tasks one at a time for its node supervisor.

The supervisor forks it with two pipes. Down the first come ``Function`` and ``Tasks``
frames; up the second go ``Results`` frames, one per task, written as soon as the task is
done. The worker exits when its input closes and dies with its supervisor.

Stdlib + dill only: it runs on bare hosts.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import protocol as p
from .serialize import RemoteException, describe_failure, dumps, loads, loads_function

# Captured print output kept per task; more is cut (the widget shows only the last lines).
OUTPUT_LIMIT = 64 * 1024
# How often the fallback watchdog checks that the supervisor still lives.
PARENT_POLL_SECONDS = 0.5
_READ_SIZE = 1 << 20


def run(read_fd: int, write_fd: int, keep_fds: tuple[int, ...] = ()) -> None:
    """Serve tasks until the input pipe closes; never returns."""
    _detach_from_supervisor(read_fd, write_fd)
    functions: dict[int, Callable[..., Any]] = {}
    decoder = p.FrameDecoder()
    while True:
        data = os.read(read_fd, _READ_SIZE)
        if not data:
            os._exit(0)
        decoder.feed(data)
        while (message := decoder.next_message()) is not None:
            _handle(message, functions, write_fd)


def _handle(message: p.Message, functions: dict[int, Callable[..., Any]], write_fd: int) -> None:
    if isinstance(message, p.Function):
        functions[message.fn_id] = loads_function(message.blob)
    elif isinstance(message, p.Tasks):
        for task in message.tasks:
            result = run_task(task, functions[task.fn_id])
            write_all(write_fd, p.encode(p.Results((result,))))
    elif isinstance(message, p.Shutdown):
        os._exit(0)


def run_task(task: p.Task, fn: Callable[..., Any]) -> p.Result:
    """Run one task (a call or a chunk of calls) and package its outcome."""
    try:
        arguments = loads(task.codec, task.payload, task.buffers)
    except Exception as error:
        reason = f"the arguments could not be unpickled on the node: {describe_failure(error)}"
        return _text_result(task.task_id, p.UNPICKLABLE, reason)
    with _captured_output() as output:
        try:
            value = _call(task.kind, fn, arguments)
        except BaseException as error:
            codec, payload = RemoteException.capture(error, skip=2).to_bytes()
            return p.Result(task.task_id, p.RAISED, codec, payload, (), output.text())
    try:
        codec, payload, buffers = dumps(value)
    except Exception as error:
        reason = f"the result could not be pickled: {describe_failure(error)}"
        return _text_result(task.task_id, p.UNPICKLABLE, reason, output.text())
    raw = tuple(buffer.raw() for buffer in buffers)
    return p.Result(task.task_id, p.OK, codec, payload, raw, output.text())


def _call(kind: int, fn: Callable[..., Any], arguments: Any) -> Any:
    if kind == p.CALL:
        args, kwargs = arguments
        return fn(*args, **kwargs)
    results = []
    for args in arguments:
        results.append(fn(*args))
    return results


def _text_result(task_id: int, status: int, text: str, output: str = "") -> p.Result:
    return p.Result(task_id, status, p.PICKLE, text.encode("utf-8"), (), output)


class _Capture(io.StringIO):
    """A bounded stand-in for ``sys.stdout``/``sys.stderr`` during one task."""

    def write(self, text: str) -> int:
        room = OUTPUT_LIMIT - self.tell()
        if room > 0:
            super().write(text[:room])
        return len(text)

    def text(self) -> str:
        value = self.getvalue()
        if len(value) >= OUTPUT_LIMIT:
            value += "\n[output cut at 64 KiB]\n"
        return value


@contextlib.contextmanager
def _captured_output() -> Any:
    capture = _Capture()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = capture
    try:
        yield capture
    finally:
        sys.stdout, sys.stderr = saved


def write_all(fd: int, chunks: list[p.Buffer]) -> None:
    """Write every chunk fully to a blocking file descriptor."""
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while view:
            written = os.write(fd, view)
            view = view[written:]


def _detach_from_supervisor(read_fd: int, write_fd: int) -> None:
    """Keep only our own pipes, ignore the kernel's SIGINT, and die with the supervisor."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    low, high = sorted((read_fd, write_fd))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 1 << 16)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()


def _die_with_parent() -> None:
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    watchdog = threading.Thread(target=_watch_parent, args=(parent,), daemon=True)
    watchdog.start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)
