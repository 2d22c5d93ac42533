"""What a project's run makes of its finished tasks: counts, and rows for the store.

:class:`OutcomeCollector` is owned by the run (:class:`~ceranubis_jupyter.projects.run.
ProjectRun`), which calls it: it knows which arguments each submitted task carries, takes
the task records the scheduler hands over, counts them in a :class:`Tally` (what a live
view shows), and queues their rows for the next write (:class:`~ceranubis_jupyter.
projects.records.Outcome` objects, or flat values for plain results). Here too: the BLOB
form of arguments and results (:func:`encode`, :func:`decode`), an error as stored
(:func:`error_text`), and the state a project ends in (:func:`final_state`).
"""

from __future__ import annotations

import collections
import pickle
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

from ..cluster.tasks import CANCELLED, FINISHED, InFlight, ResultSlot, TaskRecord
from ..errors import BrokenCeranubisExecutor, RemoteTraceback
from ..wire import protocol as p
from ..wire.serialize import PICKLE_PROTOCOL, dumps_inband, loads, needs_dill
from .records import Outcome
from .store import ARGUMENT_STATES, UNFINISHED

# Arguments whose finished tasks one write collects at most: a run that finished many
# before its insert committed writes them in steps, not as one list of every row.
COLLECT_ARGUMENTS = 50_000
# Finished results, errors and output lines kept in memory for a live view.
RECENT_KEEP = 50
OUTPUT_KEEP = 200

# Pickles scanned for dill's marker at once in encode_many: one transient join of them.
_SCAN_STEP = 65536
_PICKLED = bytes([p.PICKLE])
_LEFT = "pending"  # an argument whose task was dropped (executor shut down): run it later
# Stored arguments up to this size travel as a copy of their pickle (stored_payload),
# bigger ones as a view of the stored bytes, which is not doubled in memory. A view costs
# two objects that the garbage collector tracks (the view and its buffer) for as long as
# its task is in flight: with tiny tasks, as many tracked objects again per task, and a
# full collection (11-19 ms) in a run of 20,000. A copy of 64 KiB costs a few us.
VIEW_ARGUMENT_BYTES = 65536


def encode(obj: Any) -> bytes:
    """Bytes for a BLOB column: one codec byte, then the pickle (or dill) payload."""
    try:
        payload = pickle.dumps(obj, PICKLE_PROTOCOL)
        if not needs_dill(payload):  # as serialize.dumps_inband decides, minus a call
            return _PICKLED + payload
    except Exception:
        pass
    codec, payload = dumps_inband(obj)
    return bytes([codec]) + payload


def encode_many(items: Sequence[Any]) -> list[bytes]:
    """:func:`encode` of each item, in one C-speed pass when none needs dill (about twice
    as fast on tiny arguments, and each pickle is made once: no second list of them).
    Raises what pickling one of them raised."""
    dumps, protocol, codec = pickle.dumps, PICKLE_PROTOCOL, _PICKLED
    try:
        blobs = [codec + dumps(item, protocol) for item in items]
    except Exception:
        return [encode(item) for item in items]  # some need dill (or cannot be pickled)
    # One scan per step (a match across two blobs only costs time), not one joined copy.
    for start in range(0, len(blobs), _SCAN_STEP):
        if needs_dill(b"".join(blobs[start : start + _SCAN_STEP])):
            return [
                encode(item) if needs_dill(blob) else blob
                for item, blob in zip(items, blobs, strict=True)
            ]
    return blobs


def stored_payload(blob: bytes) -> p.Buffer:
    """The pickle of a stored argument (its codec byte left out), as a task's payload: a
    copy when small, else a view of ``blob`` (see VIEW_ARGUMENT_BYTES)."""
    return memoryview(blob)[1:] if len(blob) > VIEW_ARGUMENT_BYTES else blob[1:]


def decode(blob: bytes) -> Any:
    """Inverse of :func:`encode`."""
    return loads(blob[0], memoryview(blob)[1:])


def error_text(error: BaseException) -> str:
    """An error as stored: the remote traceback when there is one, else type and message."""
    cause = error.__cause__
    if isinstance(cause, RemoteTraceback):
        return cause.text
    return f"{type(error).__name__}: {error}"


@dataclass
class Tally:
    """Outcomes of this run so far (guarded by its collector's lock)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ARGUMENT_STATES, 0))
    resolved_tasks: int = 0
    recent: collections.deque[tuple[tuple[Any, ...], Any]] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_KEEP)
    )
    errors: collections.deque[tuple[tuple[Any, ...], str]] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_KEEP)
    )
    output: collections.deque[tuple[str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=OUTPUT_KEEP)
    )


class OutcomeCollector:
    """A run's tasks from submit to store row: which arguments each task carries, the
    finished ones the scheduler handed over, the :class:`Tally` a live view reads, and
    the rows not written yet.

    The run registers each task (:meth:`track`) before submitting it; the scheduler's
    listener hands finished ones over (:meth:`arrived`, loop thread); the run thread
    counts them and queues their rows (:meth:`collect`), takes the rows for a write
    (:attr:`outcomes`, :attr:`done_values`) and forgets them once written
    (:meth:`written`). Any thread reads the counts and the recent outcomes.

    Args:
        args: the argument tuples the run submits, ``chunksize`` per task.
        counts_before: the store's counts when the run starts (done ones stay done).
        clock: seconds from ``time.monotonic()`` to ``time.time()`` (task times are
            monotonic, stored ones are wall-clock).
    """

    def __init__(
        self,
        args: Sequence[tuple[Any, ...]],
        chunksize: int,
        counts_before: dict[str, int],
        clock: float,
    ) -> None:
        self.args, self.chunksize, self.clock = args, chunksize, clock
        # The store ids of ``args`` (same order); None until the project's insert commits.
        self.ids: Sequence[int] | None = None
        self.total = sum(counts_before.values())
        self.done_before = counts_before["done"]
        self.tally = Tally()
        self._lock = threading.Lock()  # guards the tally: the run thread writes, any reads
        self._finished: collections.deque[TaskRecord] = collections.deque()
        self._not_yet: list[TaskRecord] = []  # seen by the scheduler, outcome not yet set
        # Unresolved tasks: task id -> index of their first argument (see span); finished
        # ones are dropped so a long project does not keep every result in memory. Plain
        # ints and flat lists, not a tuple per task: fewer objects for the cyclic GC, whose
        # full passes grow with every object that lives through a flush period.
        self._spans: dict[int, int] = {}
        self._marked: set[int] = set()  # tasks whose arguments the store shows running
        self.outcomes: list[Outcome] = []  # unwritten, any state
        self.done_values: list[Any] = []  # unwritten plain results: Store.DONE_VALUES each

    # ------------------------------------------------------------------ tasks

    def span(self, lo: int) -> tuple[int, int]:
        """``(lo, hi)``: the arguments of the task whose first argument is ``lo``."""
        return lo, self.end(lo)

    def end(self, lo: int) -> int:
        """One past the last argument of the task whose first argument is ``lo``."""
        return min(lo + self.chunksize, len(self.args))

    def track(self, task_ids: Sequence[int], starts: Sequence[int]) -> None:
        """Know these tasks (before they are submitted: one may finish at once)."""
        spans = self._spans
        for task_id, lo in zip(task_ids, starts, strict=True):
            spans[task_id] = lo

    def untrack(self, task_ids: Sequence[int]) -> None:
        """Forget tasks that were never submitted."""
        for task_id in task_ids:
            del self._spans[task_id]

    def unresolved(self) -> list[int]:
        """Ids of the tasks tracked and not collected yet."""
        return list(self._spans)

    def arrived(self, record: TaskRecord) -> bool:
        """Scheduler listener (loop thread): keep a finished task if it is ours.

        Ours are those tracked: other runs and ``map`` may call the same function on the
        same executor. The slot is set right after this call.
        """
        if record.task_id in self._spans:
            self._finished.append(record)
            return True
        return False

    def idle(self) -> bool:
        """Nothing handed over is left to collect."""
        return not self._finished and not self._not_yet

    def backlog(self) -> bool:
        """Finished tasks wait that the last :meth:`collect` left for the next one."""
        return bool(self._finished)

    # ------------------------------------------------------------------ reading

    def counts(self, in_flight: Sequence[InFlight]) -> dict[str, int]:
        """Arguments per state, from memory; ``in_flight``: the scheduler's snapshot."""
        with self._lock:
            counts = self.tally.counts
            done, failed, cancelled = counts["done"], counts["failed"], counts["cancelled"]
        done += self.done_before
        left = self.total - done - failed - cancelled
        running = min(self._running(in_flight), left)
        return dict(
            pending=left - running, running=running, done=done, failed=failed, cancelled=cancelled
        )

    def resolved_tasks(self) -> int:
        """Tasks collected so far."""
        with self._lock:
            return self.tally.resolved_tasks

    def recent(self, n: int) -> list[tuple[tuple[Any, ...], Any]]:
        """The last ``n`` ``(args, result)``, newest last."""
        with self._lock:
            return list(self.tally.recent)[-n:] if n > 0 else []

    def recent_errors(self, n: int) -> list[tuple[tuple[Any, ...], str]]:
        """The last ``n`` ``(args, error text)``, newest last."""
        with self._lock:
            return list(self.tally.errors)[-n:] if n > 0 else []

    def recent_output(self, n: int) -> list[tuple[str, str]]:
        """The last ``n`` ``(host, line)`` the tasks printed."""
        with self._lock:
            return list(self.tally.output)[-n:] if n > 0 else []

    def _running(self, in_flight: Sequence[InFlight]) -> int:
        spans = self._spans
        running = 0
        for task in in_flight:
            lo = spans.get(task.task_id)
            if lo is not None:
                running += self.end(lo) - lo
        return running

    def running_marks(
        self, in_flight: Sequence[InFlight], before: float
    ) -> list[tuple[int, str, float]]:
        """``(arg_id, host, started)`` of tasks in flight since ``before`` (monotonic) and
        not marked yet: :meth:`Store.mark_running` rows. Needs the ids."""
        assert self.ids is not None, "marks are written once the project is committed"
        rows: list[tuple[int, str, float]] = []
        spans, marked, ids = self._spans, self._marked, self.ids
        for task in in_flight:
            lo = spans.get(task.task_id)
            if task.started > before or task.task_id in marked or lo is None:
                continue
            marked.add(task.task_id)
            started = task.started + self.clock if task.started else time.time()
            rows.extend((arg_id, task.host, started) for arg_id in ids[lo : self.end(lo)])
        return rows

    # ------------------------------------------------------------------ collecting

    def collect(self, *, cancelling: bool, results_only: bool) -> bool:
        """Count the tasks finished since the last call and queue their rows; ``False``
        when there were none. Needs the ids.

        Args:
            cancelling: the run cancels its tasks: a cancelled one is ``cancelled`` (else
                it was dropped with its executor, and its arguments stay ``pending``).
            results_only: another process runs the project now: queue only results.
        """
        records, self._not_yet = self._not_yet, []
        finished, most = self._finished, max(1, COLLECT_ARGUMENTS // self.chunksize)
        while finished and len(records) < most:
            records.append(finished.popleft())
        if not records:
            return False
        with self._lock:
            rest = self._fast_done(records) if self.chunksize == 1 else records
            for record in rest:
                self._collect_one(record, cancelling, results_only)
        return True

    def written(self) -> None:
        """The queued rows are in the store."""
        self.outcomes.clear()
        self.done_values.clear()

    def _fast_done(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """Queue plain results (the hot path, inlined); returns the records left to do."""
        args, ids, clock, spans, marked = (
            self.args,
            self.ids,
            self.clock,
            self._spans,
            self._marked,
        )
        assert ids is not None, "outcomes are collected once the project is committed"
        rows, recent, rest, done = self.done_values, self.tally.recent, [], 0
        for record in records:
            slot: Any = record.future  # a ResultSlot: see ProjectRun._task
            blob = slot.blob
            if slot.state != FINISHED or blob is None or record.output:
                rest.append(record)  # not a plain result as it came: the general path
                continue
            lo = spans.pop(record.task_id, None)
            if lo is None:  # not ours (we track each task before we collect)
                continue
            marked.discard(record.task_id)
            recent.append((args[lo], slot.value))
            rows += (
                ids[lo],
                blob,
                record.host,
                record.attempts + 1,
                record.started + clock,
                record.finished + clock,
            )
            done += 1
        self.tally.resolved_tasks += done
        self.tally.counts["done"] += done
        return rest

    def _collect_one(self, record: TaskRecord, cancelling: bool, results_only: bool) -> None:
        slot = record.future
        assert isinstance(slot, ResultSlot), "a project's tasks are made by ProjectRun._task"
        if not slot.done():  # finished just now: its slot is set right after
            self._not_yet.append(record)
            return
        lo = self._spans.pop(record.task_id, None)
        if lo is None:  # not ours (we track each task before we collect)
            return
        state, value = _outcome(slot, cancelling)
        span = self.span(lo)
        self._marked.discard(record.task_id)
        self._count(record, state, value, *span)
        if state == "done" or not results_only:
            self._queue(record, state, value, *span)

    def _count(self, record: TaskRecord, state: str, value: Any, lo: int, hi: int) -> None:
        tally = self.tally
        tally.resolved_tasks += 1
        tally.counts[state] += hi - lo
        if state == "done":
            if self.chunksize == 1:
                tally.recent.append((self.args[lo], value))
            else:
                tally.recent.extend(zip(self.args[lo:hi], value, strict=False))
        elif state == "failed":
            text = error_text(value)
            tally.errors.extend((args, text) for args in self.args[lo:hi])
        if record.output:
            host = record.host or "?"
            tally.output.extend((host, line) for line in record.output.splitlines())

    def _queue(self, record: TaskRecord, state: str, value: Any, lo: int, hi: int) -> None:
        """Queue the rows of one finished task: plain results as :attr:`done_values`,
        anything else as :class:`Outcome` objects."""
        assert self.ids is not None, "outcomes are collected once the project is committed"
        ids, ran = self.ids[lo:hi], bool(record.started)
        timing = _Timing(
            record.host,
            record.attempts + 1 if ran else 0,
            record.started + self.clock if ran else None,
            record.finished + self.clock if ran else None,
            record.output or None,
        )
        if state != "done":
            error = error_text(value) if state == "failed" else None
            self.outcomes.extend(timing.outcome(arg_id, state, None, error) for arg_id in ids)
            return
        if self.chunksize == 1:
            blob = record.future.blob if isinstance(record.future, ResultSlot) else None
            self._queue_result(ids[0], value, blob, timing)
        else:
            for arg_id, result in zip(ids, value, strict=False):
                self._queue_result(arg_id, result, None, timing)

    def _queue_result(self, arg_id: int, value: Any, blob: bytes | None, timing: _Timing) -> None:
        try:
            blob = blob or encode(value)
        except Exception as error:
            text = f"the result could not be pickled for the store: {error_text(error)}"
            self.outcomes.append(timing.outcome(arg_id, "failed", None, text))
            return
        if timing.output is None and timing.started is not None:
            self.done_values += (arg_id, blob, *timing.plain())
        else:
            self.outcomes.append(timing.outcome(arg_id, "done", blob, None))


@dataclass(frozen=True)
class _Timing:
    """Where and when one finished task ran: what its arguments' rows share."""

    host: str | None
    attempts: int
    started: float | None
    finished: float | None
    output: str | None

    def outcome(self, arg_id: int, state: str, result: bytes | None, error: str | None) -> Outcome:
        return Outcome(
            arg_id,
            state,
            result,
            error,
            self.host,
            self.attempts,
            self.started,
            self.finished,
            self.output,
        )

    def plain(self) -> tuple[str | None, int, float | None, float | None]:
        """``host, attempts, started, finished``: the tail of a :attr:`done_values` entry."""
        return self.host, self.attempts, self.started, self.finished


def _outcome(slot: ResultSlot, cancelling: bool) -> tuple[str, Any]:
    """``(state, result or error)`` of a finished task."""
    error = slot.error
    if slot.state == CANCELLED or isinstance(error, CancelledError):
        return ("cancelled" if cancelling else _LEFT), None
    if error is None:
        return "done", slot.value
    if isinstance(error, BrokenCeranubisExecutor):
        return _LEFT, None
    return "failed", error  # the task's own error (of any type), or its timeout


def final_state(counts: dict[str, int], cancelled: bool) -> str:
    """The state a project ends in, from its counts."""
    if any(counts[state] for state in UNFINISHED):
        return "cancelled" if cancelled else "stopped"
    if counts["failed"]:
        return "failed"
    if counts["cancelled"]:
        return "cancelled"
    return "done"


__all__ = [
    "OutcomeCollector",
    "Tally",
    "decode",
    "encode",
    "encode_many",
    "error_text",
    "final_state",
    "stored_payload",
]
