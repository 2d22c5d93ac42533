"""A worker process: runs tasks one at a time for its node supervisor.

The supervisor forks it with two pipes and a :class:`~.slot.RunningSlot`. Down the first
pipe come ``Function`` and ``Tasks`` frames; up the second go ``Results`` frames: results
of tiny tasks are gathered for up to ``RESULT_FLUSH_SECONDS``, a slow task's result goes at
once, and nothing waits once the worker runs out of tasks. Before each task the worker
notes it in the slot, so the supervisor knows which task was running if the worker dies.
The worker exits when its input closes and dies with its supervisor.

Stdlib + dill only: it runs on bare hosts.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..wire import protocol as p
from ..wire.framing import READ_SIZE
from ..wire.iov import write_all
from ..wire.serialize import RemoteException, describe_failure, dumps, loads, loads_function
from . import borrow
from .code import activate
from .files import worker_chdir
from .output import Streamer, TaskOutput
from .slot import RunningSlot

# How often the fallback watchdog checks that the supervisor still lives.
PARENT_POLL_SECONDS = 0.5
# Seconds a finished result may wait for the results of the next tasks: one frame per
# millisecond instead of one per tiny task, at a latency cost only while tasks keep coming.
RESULT_FLUSH_SECONDS = 0.001
# Seconds a worker may keep the node's lent input while it runs a task it read from it
# (the watcher ticks at this period: it gives the input back within twice this). The node
# is deaf meanwhile: a cancel, a timeout, the next tasks wait that long at most.
HOLD_SECONDS = 0.002
# Seconds without a task from the lent input after which the watcher of held input stops
# ticking (the next one wakes it: a thread wake-up, which a steady stream of them is spared).
WATCH_IDLE_SECONDS = 0.1


class ClientPipe:
    """The node's output to the client, which its workers may write to as well.

    A worker writes a small results frame straight to the client (one hop less than through
    the node) when it gets the lock at once and the pipe has room: a write of at most
    ``select.PIPE_BUF`` bytes to a pipe goes in whole or not at all, so frames never mix.
    The node holds the same lock (a POSIX record lock: one owner per process) from the
    first byte of its own frames to the last. Otherwise the frame goes through the node.
    """

    def __init__(self, fd: int, lock_fd: int) -> None:
        self.fd = fd
        self.lock_fd = lock_fd
        self._news = mmap.mmap(-1, 1)  # 1 while the node wants to hear of each delivery

    def want_news(self, wanted: bool) -> None:
        """(Node) Ask workers to tell of each direct delivery at once, or not.

        The node wants it while tasks wait in its queue: a worker that frees up must get
        more. Otherwise a note would only wake the node for nothing (it reads
        :meth:`RunningSlot.delivered` when it next looks), and on a small machine that
        wake-up competes for a core with the client taking the result.
        """
        self._news[0] = 1 if wanted else 0

    def news_wanted(self) -> bool:
        """(Worker) Whether to tell the node of a direct delivery now."""
        return self._news[0] == 1

    @classmethod
    def open(cls, fd: int) -> ClientPipe | None:
        """A shared pipe for ``fd``, or ``None`` where writes to it are not atomic."""
        if not stat.S_ISFIFO(os.fstat(fd).st_mode) or not hasattr(os, "memfd_create"):
            return None
        try:
            return cls(fd, os.memfd_create("ceranubis-output-lock"))
        except OSError:
            return None

    def try_lock(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
        try:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def unlock(self) -> None:
        fcntl.lockf(self.lock_fd, fcntl.LOCK_UN)

    def try_send(self, chunks: list[p.Buffer]) -> bool:
        """Write a whole frame to the client now, or nothing (``False``)."""
        frame = b"".join(chunks)
        if len(frame) > select.PIPE_BUF or not self.try_lock():
            return False
        try:
            return os.write(self.fd, frame) == len(frame)
        except OSError:  # full (EAGAIN) or the client is gone: the node will tell
            return False
        finally:
            self.unlock()


class _Outgoing:
    """Results waiting to go up the pipe, written as one frame.

    A result may wait ``RESULT_FLUSH_SECONDS`` for the results of the next tiny tasks, never
    longer: a flusher thread writes it out even while a long task runs after it. Small
    frames go straight to the client when they can (:class:`ClientPipe`); the node then
    gets a ``DELIVERED`` note per task if it asked for news, and otherwise finds the last
    delivered task in the :class:`RunningSlot` when it next looks. What a task prints
    (:mod:`.output`) and has not sent goes just before its result, in the same frame;
    lines sent while it ran went through the node in frames of their own, and then its
    result goes that way too: nothing may overtake them.
    """

    def __init__(self, fd: int, client: ClientPipe | None, slot: RunningSlot) -> None:
        self.fd = fd
        self.client = client
        self.slot = slot
        self.results: list[p.Result] = []
        self.since = 0.0
        self.streamed: set[int] = set()  # tasks whose result must follow their output
        self._input: list[p.Buffer] | None = None  # the lent input to give back (hold_input)
        self._held_at = 0.0  # when it was last held
        self._watching = False  # the watcher ticks (see _watch_held)
        self._watch = threading.Event()
        self._watcher: threading.Thread | None = None  # started at the first hold
        self._lock = threading.Lock()
        self._waiting = threading.Event()
        threading.Thread(target=self._flush_late, name="result-flusher", daemon=True).start()

    def add(
        self, result: p.Result, started: float, more: bool, output: TaskOutput | None = None
    ) -> None:
        """Queue a result, after what its task printed and has not sent (``output``);
        write the batch if it is old or this task was slow.

        ``more``: another task runs before the next flush, so the flusher must watch (only
        then: waking it for every lone task would cost a thread switch per round trip).
        """
        now = time.monotonic()
        with self._lock:
            if not self.results:
                self.since = started
            if output is not None:  # the same frame as its result: nothing comes between
                self.results += output.take(final=True)
                if output.streamed:
                    self.streamed.add(output.task_id)
            self.results.append(result)
            if now - self.since >= RESULT_FLUSH_SECONDS:
                self._write()
                return
        if more and not self._waiting.is_set():
            # Event.set takes a lock and notifies each time: ~3.6 % of a worker's CPU in W1.
            # Skipping it while set loses nothing: the flusher clears the event before
            # its sleep, and its flush after the sleep takes every result added before.
            self._waiting.set()

    def flush(self) -> None:
        """Write every waiting result now, then give back the lent input if held."""
        with self._lock:
            self._write()
            self._give_back()

    def send_now(self, chunks: list[p.Buffer]) -> None:
        """Write a frame of our own to the node now, after the results waiting."""
        with self._lock:
            self._write()
            self._to_node(chunks)

    def hold_input(self, chunks: list[p.Buffer]) -> None:
        """Give the lent input back (``chunks``) just before anything else goes to the
        node, at the next flush, or after ``HOLD_SECONDS`` (the watcher thread): a quick
        task read from it sends its result before the node wakes to take the input back
        (on a busy host the node's turn would otherwise come before the task's)."""
        with self._lock:
            self._input, self._held_at = chunks, time.monotonic()
            if self._watching:
                return
            self._watching = True
        self._watch.set()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_held, daemon=True)
            self._watcher.start()

    def _watch_held(self) -> None:
        """Give back the lent input that a running task holds for ``HOLD_SECONDS``: ticks
        while tasks come from it, waits to be woken after ``WATCH_IDLE_SECONDS`` without."""
        while True:
            self._watch.wait()
            self._watch.clear()
            while True:
                time.sleep(HOLD_SECONDS)
                with self._lock:
                    held_for = time.monotonic() - self._held_at
                    if self._input is not None and held_for >= HOLD_SECONDS:
                        self._give_back()
                    elif self._input is None and held_for >= WATCH_IDLE_SECONDS:
                        self._watching = False
                        break

    def _give_back(self) -> None:
        if self._input is not None:
            chunks, self._input = self._input, None
            write_all(self.fd, chunks)
            self.slot.set_reading(False)

    def _to_node(self, chunks: list[p.Buffer]) -> None:
        """Write ``chunks`` to the node, after the held input: the node must learn of a
        held task before anything about it (its output, result or delivery)."""
        self._give_back()
        write_all(self.fd, chunks)

    def send_output(self, output: TaskOutput) -> None:
        """Send the whole lines a running task printed and has not sent, in a frame of
        their own, after the results already waiting."""
        with self._lock:
            chunks = output.take(final=False)  # under the lock: chunks leave in order
            if chunks:
                self.streamed.add(output.task_id)
                self._write()
                self._to_node(p.encode(p.Results(tuple(chunks))))

    def _write(self) -> None:
        if not self.results:
            return
        frame = p.encode(p.Results(tuple(self.results)))
        if self.client is None or self._after_output() or not self.client.try_send(frame):
            self._to_node(frame)
        else:
            self.slot.set_delivered(self.results[-1].task_id)
            if self.client.news_wanted():
                notes = tuple(_delivered(r.task_id) for r in self.results if r.status != p.OUTPUT)
                self._to_node(p.encode(p.Results(notes)))
        self.results = []

    def _after_output(self) -> bool:
        """Whether a waiting result follows output its task sent through the node while
        it ran (and so must go that way too); forgets those tasks."""
        if not self.streamed:
            return False
        ids = {result.task_id for result in self.results}
        if self.streamed.isdisjoint(ids):
            return False
        self.streamed -= ids
        return True

    def _flush_late(self) -> None:
        while True:
            self._waiting.wait()
            self._waiting.clear()
            time.sleep(RESULT_FLUSH_SECONDS)
            self.flush()


def run(read_fd: int, write_fd: int, slot: RunningSlot, client: ClientPipe | None) -> None:
    """Serve tasks until the input pipe closes; never returns."""
    input_fd = os.dup(0) if client else -1  # the node's input, which it may lend us
    kept = {read_fd, write_fd} | ({client.fd, client.lock_fd, input_fd} if client else set())
    _detach_from_supervisor(kept)
    functions = _Functions()
    decoder = p.FrameDecoder(p.UNCAPPED)  # its node checked the frames against the cap
    outgoing = _Outgoing(write_fd, client, slot)
    streamer = Streamer(outgoing.send_output)
    lent = False
    while True:
        if lent:
            lent = False
            _borrow(read_fd, input_fd, functions, outgoing, streamer, slot)
        if not receive(read_fd, decoder):
            os._exit(0)
        while (message := decoder.next_message()) is not None:
            if isinstance(message, p.LendInput):
                lent = True
            else:
                _handle(message, functions, outgoing, streamer, slot)
        outgoing.flush()


def _borrow(
    task_fd: int,
    input_fd: int,
    functions: _Functions,
    outgoing: _Outgoing,
    streamer: Streamer,
    slot: RunningSlot,
) -> None:
    """The node lent us its input (see borrow.py): read its next frame, give it back, and
    run the frame's task if it is one of ours; give it back unread if the node speaks."""
    if not borrow.wait_for_input(task_fd, input_fd):
        outgoing.send_now(borrow.input_back(b"", 0))
        return
    slot.set_reading(True)
    frame = borrow.read_frame(input_fd)
    message = borrow.lone_task(frame, functions.runnable)
    if message is None:
        outgoing.send_now(borrow.input_back(frame, 0))
        slot.set_reading(False)
        return
    slot.hold(message.tasks[0].task_id)  # a whole frame: the node's stream stays whole
    outgoing.hold_input(borrow.input_back(frame, message.tasks[0].task_id))
    _handle(message, functions, outgoing, streamer, slot)


def receive(fd: int, decoder: p.FrameDecoder | p.Connection) -> bool:
    """Read what ``fd`` has into ``decoder`` (large frames in place); ``False`` at EOF."""
    view = decoder.writable()
    if view is not None:
        count = os.readv(fd, [view])
        decoder.filled(count)
        return count > 0
    data = os.read(fd, READ_SIZE)
    if isinstance(decoder, p.Connection):
        decoder.receive_data(data)
    else:
        decoder.feed(data)
    return bool(data)


class _Functions(dict[int, "Callable[..., Any] | str"]):
    """The worker's functions by id, loaded (or why not), and their bytes: a new code
    pack of the user's makes them load again, from the new code."""

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[int, bytes] = {}
        self.active_code: dict[str, str] = {}  # module name -> its code pack's directory

    def load(self, fn_id: int, blob: p.Buffer) -> None:
        self.blobs[fn_id] = bytes(blob)
        self[fn_id] = _load_function(blob)

    def runnable(self, fn_id: int) -> bool:
        """Whether function ``fn_id`` is loaded here (and could be)."""
        return callable(self.get(fn_id))

    def use_code(self, offer: p.CodeOffer) -> None:
        activate(offer.digest, offer.name, self.active_code)
        for fn_id, blob in self.blobs.items():
            self[fn_id] = _load_function(blob)


def _handle(
    message: p.Message,
    functions: _Functions,
    outgoing: _Outgoing,
    streamer: Streamer,
    slot: RunningSlot,
) -> None:
    if isinstance(message, p.Function):
        functions.load(message.fn_id, message.blob)
    elif isinstance(message, p.CodeOffer):
        functions.use_code(message)
    elif isinstance(message, p.FileSync):
        worker_chdir(message)
    elif isinstance(message, p.Tasks):
        last = len(message.tasks) - 1
        for index, task in enumerate(message.tasks):
            started = time.monotonic()
            slot.set(task.task_id, started)
            fn = functions[task.fn_id]
            output = None
            if isinstance(fn, str):
                result = _text_result(task.task_id, p.UNPICKLABLE, fn)
            else:
                streamer.begin(task.task_id)
                result = run_task(task, fn, streamer)
                output = streamer.end()
            slot.set(0, 0.0)
            outgoing.add(result, started, index < last, output)
        outgoing.flush()  # the next frame's tasks may be long: do not hold these results
    elif isinstance(message, p.Shutdown):
        os._exit(0)


def _load_function(blob: p.Buffer) -> Callable[..., Any] | str:
    """The function, or why it cannot be loaded here (each of its tasks will say so)."""
    try:
        return loads_function(blob)
    except Exception as error:
        return (
            f"the function could not be loaded on the node: {describe_failure(error)}. A "
            "function from an importable module travels by reference: make that module "
            "importable on the host, or define the function in the notebook (__main__) "
            "so that it travels by value"
        )


def run_task(task: p.Task, fn: Callable[..., Any], streamer: Streamer) -> p.Result:
    """Run one task (a call or a chunk of calls), printing to ``streamer``; its outcome."""
    try:
        arguments = loads(task.codec, task.payload, task.buffers)
    except Exception as error:
        reason = f"the arguments could not be unpickled on the node: {describe_failure(error)}"
        return _text_result(task.task_id, p.UNPICKLABLE, reason)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = streamer.stdout, streamer.stderr
    try:
        value = _call(task.kind, fn, arguments)
    except BaseException as error:
        codec, payload = RemoteException.capture(error, skip=2).to_bytes()
        return p.Result(task.task_id, p.RAISED, codec, payload, (), streamer.text())
    finally:
        sys.stdout, sys.stderr = saved
    try:
        codec, payload, buffers = dumps(value)
    except Exception as error:
        reason = f"the result could not be pickled: {describe_failure(error)}"
        return _text_result(task.task_id, p.UNPICKLABLE, reason, streamer.text())
    raw = tuple(buffer.raw() for buffer in buffers) if buffers else ()
    return p.Result(task.task_id, p.OK, codec, payload, raw, streamer.text())


def _call(kind: int, fn: Callable[..., Any], arguments: Any) -> Any:
    if kind == p.CALL:
        args, kwargs = arguments
        return fn(*args, **kwargs)
    if kind == p.ARGS:
        return fn(*arguments)
    results = []
    for args in arguments:
        results.append(fn(*args))
    return results


def _delivered(task_id: int) -> p.Result:
    return p.Result(task_id, p.DELIVERED, p.PICKLE, b"")


def _text_result(task_id: int, status: int, text: str, output: str = "") -> p.Result:
    return p.Result(task_id, status, p.PICKLE, text.encode("utf-8"), (), output)


def _detach_from_supervisor(kept: set[int]) -> None:
    """Keep only our own descriptors, ignore the kernel's SIGINT, die with the supervisor."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    low = 3
    for fd in sorted(kept):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)
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
