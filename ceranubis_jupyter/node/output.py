"""What a task prints: kept whole for its result, and streamed to the client as it runs.

::

    task thread                        streamer thread (one per worker)
    ───────────                        ────────────────────────────────
    print() ─► TaskOutput.write ─────► woken by the first unsent text, waits
               (whole text, bounded;   OUTPUT_FLUSH_SECONDS, then sends the whole lines
                unsent chunks by        so far as ``OUTPUT`` results
                stream)
    task ends ─► the rest (``final``) goes in its result's frame, just before the
                 result, whose ``output`` is the whole text (for the widget and the
                 project store)

A chunk's payload names its stream (``p.STDOUT``, ``p.STDERR``); the client writes it
to its own. Chunks and the result leave in order: the worker's outgoing queue takes them
under its lock, and once chunks went through the node while the task ran, its result
goes that way too.

Stdlib only: it runs on bare hosts.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

from ..wire import protocol as p
from ..wire.messages import CUT_NOTE, OUTPUT_LIMIT

# A running task's printed lines reach the client this late at most; shorter sends more,
# smaller frames for a task that prints a lot.
OUTPUT_FLUSH_SECONDS = 0.1


class TaskOutput:
    """One task's ``sys.stdout`` and ``sys.stderr``: the whole text and the unsent chunks.

    Args:
        task_id: the task whose output it is.
        wake: called when unsent text appears (once until the next :meth:`take`), from
            the task's thread.
        lock: guards the text (the streamer's: one task at a time runs on a worker).
    """

    __slots__ = (
        "_closed",
        "_lock",
        "_parts",
        "_size",
        "_unsent",
        "_wake",
        "_woken",
        "streamed",
        "task_id",
    )

    def __init__(self, task_id: int, wake: Callable[[], None], lock: threading.Lock) -> None:
        self.task_id = task_id
        self.streamed = False  # some was sent while it ran: its result must go the same way
        self._wake = wake
        self._lock = lock
        self._parts: list[str] = []
        self._size = 0
        self._unsent: list[tuple[bytes, str]] = []
        self._closed = False
        self._woken = False  # the streamer was told of the unsent text

    def write(self, stream: bytes, text: str) -> None:
        """Keep what was printed to ``stream`` (up to :data:`OUTPUT_LIMIT` in all)."""
        with self._lock:
            room = OUTPUT_LIMIT - self._size
            if room <= 0 or not text:
                return
            text = text[:room]
            self._parts.append(text)
            self._size += len(text)
            unsent = self._unsent
            if unsent and unsent[-1][0] == stream:
                unsent[-1] = (stream, unsent[-1][1] + text)
            else:
                unsent.append((stream, text))
            woken, self._woken = self._woken, True
        if not woken:
            self._wake()

    def take(self, final: bool) -> list[p.Result]:
        """The unsent text as ``OUTPUT`` results: its whole lines while the task runs, all
        of it once ``final`` (after which nothing more is taken)."""
        with self._lock:
            if self._closed:
                return []
            self._closed = final
            self._woken = False
            chunks, self._unsent = self._unsent, []
            if not final and chunks:
                stream, text = chunks[-1]
                cut = text.rfind("\n") + 1
                if cut < len(text):  # a line still being printed waits for its end
                    self._unsent.append((stream, text[cut:]))
                    chunks[-1] = (stream, text[:cut])
                    if not cut:
                        chunks.pop()
            if final and self._size >= OUTPUT_LIMIT:
                chunks.append((p.STDERR, CUT_NOTE))
        if chunks and not final:
            self.streamed = True
        task_id = self.task_id
        return [p.Result(task_id, p.OUTPUT, p.PICKLE, stream, (), text) for stream, text in chunks]

    def text(self) -> str:
        """Everything the task printed, both streams in the order printed."""
        with self._lock:
            value = "".join(self._parts)
        return value + CUT_NOTE if len(value) >= OUTPUT_LIMIT else value


class _Stream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` while tasks run: writes to the running task's."""

    def __init__(self, streamer: Streamer, stream: bytes) -> None:
        super().__init__()
        self._streamer = streamer
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._streamer.output().write(self._stream, text)
        return len(text)


class Streamer:
    """The ``sys.stdout`` and ``sys.stderr`` tasks print to, and the thread that sends a
    running task's printed lines every :data:`OUTPUT_FLUSH_SECONDS` (only while it
    prints: it sleeps until woken).

    A task's :class:`TaskOutput` is made at its first print: a task that prints nothing
    costs two assignments.
    """

    def __init__(self, send: Callable[[TaskOutput], None]) -> None:
        self._send = send
        self._waiting = threading.Event()
        self._wake = self._waiting.set
        self._lock = threading.Lock()
        self._task_id = 0
        self._current: TaskOutput | None = None
        self.stdout = _Stream(self, p.STDOUT)
        self.stderr = _Stream(self, p.STDERR)
        threading.Thread(target=self._run, name="output-streamer", daemon=True).start()

    def begin(self, task_id: int) -> None:
        """A task starts: what is printed from now on is its."""
        self._task_id = task_id
        self._current = None

    def end(self) -> TaskOutput | None:
        """The task ended: its output, ``None`` if it printed nothing."""
        output, self._current = self._current, None
        return output

    def output(self) -> TaskOutput:
        """The running task's output (made at its first print)."""
        output = self._current
        if output is None:
            with self._lock:
                output = self._current
                if output is None:
                    output = TaskOutput(self._task_id, self._wake, self._lock)
                    self._current = output
        return output

    def text(self) -> str:
        """What the running task printed so far."""
        output = self._current
        return "" if output is None else output.text()

    def _run(self) -> None:
        while True:
            self._waiting.wait()
            self._waiting.clear()
            time.sleep(OUTPUT_FLUSH_SECONDS)
            output = self._current
            if output is not None:
                self._send(output)
