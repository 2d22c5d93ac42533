"""What a project's run makes of its finished tasks: counts, and rows for the store.

:class:`OutcomeCollector` is the part of :class:`~ceranubis_jupyter.project_run.ProjectRun`
that the run thread calls every flush period: it takes the task records the scheduler
handed over, counts them in the run's :class:`Tally` (what a live view shows), and
queues their rows for the next write (in :meth:`Outcome.row` form, or as flat values for
plain results). ``project_run.py`` holds the rest of the run: submitting, writing,
heartbeats, the final state. Here too: the BLOB form of arguments and results
(:func:`encode`, :func:`decode`), an error as stored (:func:`error_text`), and the state a
project ends in (:func:`final_state`).
"""

from __future__ import annotations

import collections
import pickle
import threading
from collections.abc import Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

from ..cluster.tasks import CANCELLED, FINISHED, ResultSlot, TaskRecord
from ..errors import BrokenCeranubisExecutor, RemoteTraceback
from ..wire import protocol as p
from ..wire.serialize import PICKLE_PROTOCOL, dumps_inband, loads, needs_dill
from .store import ARGUMENT_STATES, UNFINISHED

# Finished results, errors and output lines kept in memory for a live view.
RECENT_KEEP = 50
OUTPUT_KEEP = 200

_PICKLED = bytes([p.PICKLE])
_LEFT = "pending"  # an argument whose task was dropped (executor shut down): run it later


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
    """:func:`encode` of each item, in two C-speed passes when none needs dill (about
    twice as fast on tiny arguments). Raises what pickling one of them raised."""
    dumps, protocol = pickle.dumps, PICKLE_PROTOCOL
    try:
        payloads = [dumps(item, protocol) for item in items]
    except Exception:
        return [encode(item) for item in items]  # some need dill (or cannot be pickled)
    if needs_dill(b"".join(payloads)):  # one scan; a match across two only costs time
        pairs = zip(items, payloads, strict=True)
        return [
            encode(item) if needs_dill(payload) else _PICKLED + payload for item, payload in pairs
        ]
    return [_PICKLED + payload for payload in payloads]


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
    """Outcomes of this run so far (guarded by the run's lock)."""

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
    """Counts a run's finished tasks and queues their rows for the store (run thread).

    A mixin of ``ProjectRun``, whose ``__init__`` sets these attributes.
    """

    args: Sequence[tuple[Any, ...]]
    ids: Sequence[int]
    chunksize: int
    tally: Tally
    cancelling: bool
    _clock: float
    _lock: threading.Lock
    _finished: collections.deque[TaskRecord]
    _not_yet: list[TaskRecord]
    _spans: dict[int, int]
    _marked: set[int]
    _unwritten: list[tuple[Any, ...]]
    _unwritten_done: list[Any]
    _claim_lost: bool

    def _span(self, lo: int) -> tuple[int, int]:
        """``(lo, hi)``: the arguments of the task whose first argument is ``lo``."""
        return lo, min(lo + self.chunksize, len(self.args))

    def _collect(self) -> bool:
        """Count the tasks finished since the last call and queue their rows."""
        records, self._not_yet = self._not_yet, []
        while self._finished:
            records.append(self._finished.popleft())
        if not records:
            return False
        with self._lock:
            rest = self._fast_done(records) if self.chunksize == 1 else records
            for record in rest:
                self._collect_one(record)
        return True

    def _fast_done(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """Queue plain results (the hot path, inlined); returns the records left to do."""
        args, ids, clock, spans, marked = (
            self.args,
            self.ids,
            self._clock,
            self._spans,
            self._marked,
        )
        rows, recent, rest, done = self._unwritten_done, self.tally.recent, [], 0
        for record in records:
            slot: Any = record.future  # a ResultSlot: see _record
            blob = slot.blob
            if slot.state != FINISHED or blob is None or record.output:
                rest.append(record)  # not a plain result as it came: the general path
                continue
            lo = spans.pop(record.task_id, None)
            if lo is None:  # not ours (we register each task before we collect)
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

    def _collect_one(self, record: TaskRecord) -> None:
        slot = record.future
        assert isinstance(slot, ResultSlot), "a project's tasks are made by _record"
        if not slot.done():  # finished just now: its slot is set right after
            self._not_yet.append(record)
            return
        lo = self._spans.pop(record.task_id, None)
        if lo is None:  # not ours (we register each task before we collect)
            return
        state, value = self._outcome(slot)
        span = self._span(lo)
        self._marked.discard(record.task_id)
        self._count(record, state, value, *span)
        if state == "done" or not self._claim_lost:  # another client runs the rest
            self._unwritten.extend(self._rows(record, state, value, *span))

    def _outcome(self, slot: ResultSlot) -> tuple[str, Any]:
        """``(state, result or error)`` of a finished task."""
        error = slot.error
        if slot.state == CANCELLED or isinstance(error, CancelledError):
            return ("cancelled" if self.cancelling else _LEFT), None
        if error is None:
            return "done", slot.value
        if isinstance(error, BrokenCeranubisExecutor):
            return _LEFT, None
        return "failed", error  # the task's own error (of any type), or its timeout

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

    def _rows(
        self, record: TaskRecord, state: str, value: Any, lo: int, hi: int
    ) -> list[tuple[Any, ...]]:
        """Outcome rows (:meth:`Outcome.row` order) for one finished task."""
        clock = self._clock
        timing = (
            record.host,
            record.attempts + 1 if record.started else 0,
            record.started + clock if record.started else None,
            record.finished + clock if record.started else None,
            record.output or None,
        )
        if state != "done":
            error = error_text(value) if state == "failed" else None
            return [(state, None, error, *timing, arg_id) for arg_id in self.ids[lo:hi]]
        if self.chunksize == 1:
            blob = record.future.blob if isinstance(record.future, ResultSlot) else None
            return [self._done_row(value, timing, self.ids[lo], blob)]
        pairs = zip(self.ids[lo:hi], value, strict=False)
        return [self._done_row(result, timing, arg_id) for arg_id, result in pairs]

    def _done_row(
        self, value: Any, timing: tuple[Any, ...], arg_id: int, blob: bytes | None = None
    ) -> tuple[Any, ...]:
        try:
            return ("done", blob or encode(value), None, *timing, arg_id)
        except Exception as error:
            text = f"the result could not be pickled for the store: {error_text(error)}"
            return ("failed", None, text, *timing, arg_id)


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
]
