"""A project's live run in this process: submit its arguments, record their outcomes.

::

    kernel thread         run thread (this module)              loop thread (scheduler)
    ─────────────         ────────────────────────              ───────────────────────
    commit / resume ─► submit, SUBMIT_AHEAD in flight ─► executor ─► nodes
                          ▲                                        │ result
                          │ finished deque ◄─ scheduler listener ◄─┘ (one append, no I/O)
                          ▼
                   every ~100 ms: read the finished futures, count them, tell the
                   project's listeners, and write outcomes and running marks in one
                   transaction; a heartbeat per second (and a cancel seen from another
                   process); the final state; then an owned executor is shut down

The loop thread only appends the finished task's record to a deque (and wakes the run
thread when few tasks are left in flight): the store costs the hot path no more than that.
A project is one task per argument (``chunksize`` groups them). Its tasks have no
:class:`~concurrent.futures.Future`: nobody waits on one in memory, so each carries an
:class:`~ceranubis_jupyter.tasks.ResultSlot`. An argument travels as the bytes the store
holds (task kind ``ARGS``), and a result is stored as the bytes the worker sent: neither
is pickled twice.

A new project starts submitting while the kernel thread still inserts its arguments (the
run is given no ids then): it reads, counts and writes nothing until :meth:`ProjectRun.created`
hands it the ids of the committed rows, or stops without a trace on
:meth:`ProjectRun.abandon` when that insert failed. Tasks that finish quickly are never
marked ``running`` in the store: only those still in flight after RUNNING_MARK_SECONDS.
Counting finished tasks and building their rows is in ``project_rows.py`` (a mixin).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..cluster.executor import NodeExecutor, TaskOptions
from ..cluster.tasks import ResultSlot, TaskRecord
from ..errors import CeranubisError, StoreError
from ..wire import protocol as p
from ..wire.serialize import dumps_inband
from .rows import OutcomeCollector, Tally, decode, encode, error_text, final_state
from .store import ARGUMENT_STATES, Store

log = logging.getLogger("ceranubis")

# Seconds between writes of outcomes: longer batches mean fewer transactions, shorter ones
# lose less to a crash and keep other readers more current.
FLUSH_SECONDS = 0.1
# Seconds between heartbeats: other processes call a client gone after
# store_records.STALE_SECONDS of silence; a remote cancel is noticed within this time.
HEARTBEAT_SECONDS = 1.0
# Tasks submitted and not finished, at most: enough to keep the nodes fed through a write
# or a GIL stall (~0.1 s of tiny tasks), few enough that a big project does not hold a
# future per argument at once (memory; every full GC pass walks them all).
SUBMIT_AHEAD = 8000
# Submitting resumes when this few are left: the scheduler's listener wakes the run thread.
SUBMIT_LOW = SUBMIT_AHEAD // 2
# Tasks handed to the scheduler at once: one lock and one wake-up each, and the first
# ones reach the nodes while the rest are still being made.
SUBMIT_BATCH = 256
# Seconds between writes once every task is submitted, while results keep coming: the
# write after the last result is what a waiter waits for, so it is kept small (a tenth
# of the usual batch). Long tasks that return nothing for a while get FLUSH_SECONDS.
TAIL_FLUSH_SECONDS = 0.01
# Seconds to wait for a run to settle after a cancel, and for a flush.
SETTLE_SECONDS = 30.0
# Seconds given to a final write at interpreter exit.
EXIT_SECONDS = 3.0
# Seconds a task is in flight before the store marks its arguments running: tiny tasks
# finish first and cost no write at all; a longer one shows as running this much later.
RUNNING_MARK_SECONDS = 0.1

# Serializes changes to a scheduler's listener list (replaced whole: the loop thread may be
# iterating the old one).


class ProjectRun(OutcomeCollector):
    """Runs ``items`` of one project on an executor and records every outcome once.

    Args:
        store: a connection of its own (the run thread writes through it, then closes it).
        project_id: the project's row id; ``client`` is this process's claim on it.
        executor: where tasks run; shut down at the end when ``owns_executor``.
        fn: the target function; ``args``: the argument tuples to run now, and
            ``blobs``: the same as the store holds them (:func:`encode`).
        ids: the store ids of ``args`` (same order); ``None`` while the project's insert
            is still under way: the run submits, and writes once :meth:`created` is called.
        counts_before: the store's counts when the run starts (done ones stay done).
        notify: called from the run thread after finished arguments were counted (at most
            every ~0.1 s) and once more when the run ends.
    """

    def __init__(
        self,
        store: Store,
        project_id: int,
        client: str,
        executor: NodeExecutor,
        owns_executor: bool,
        fn: Callable[..., Any],
        args: Sequence[tuple[Any, ...]],
        blobs: Sequence[bytes],
        ids: Sequence[int] | None,
        counts_before: dict[str, int],
        notify: Callable[[], None],
        chunksize: int = 1,
        options: TaskOptions | None = None,
    ) -> None:
        self.store, self.project_id, self.client = store, project_id, client
        self.executor, self.owns_executor = executor, owns_executor
        self.fn, self.args, self.blobs, self.chunksize = fn, args, blobs, chunksize
        self.ids: Sequence[int] = () if ids is None else ids
        self.options = options or executor.options().task_options
        self.notify = notify
        self.total = sum(counts_before.values())
        self.done_before = counts_before["done"]
        self.tally = Tally()
        self.final_state = "running"
        self.cancelling = False
        self.started = time.time()
        self._clock = time.time() - time.monotonic()
        self._lock = threading.Lock()
        self._finished: collections.deque[TaskRecord] = collections.deque()
        self._not_yet: list[TaskRecord] = []  # seen by the scheduler, outcome not yet set
        self._seen = 0  # tasks the scheduler finished (loop thread only)
        self._fn_id = -1
        self._submitted = 0
        # Unresolved tasks: task id -> index of their first argument (see _span); finished
        # ones are dropped so a long project does not keep every result in memory. Plain
        # ints and flat lists, not a tuple per task: fewer objects for the cyclic GC, whose
        # full passes grow with every object that lives through a flush period.
        self._spans: dict[int, int] = {}
        self._marked: set[int] = set()
        self._unwritten: list[tuple[Any, ...]] = []  # Outcome.row() form
        self._unwritten_done: list[Any] = []  # Store.record_rows(done=...) form: flat
        self._next = 0
        self._stop_submitting = False
        self._swept = False
        self._exiting = False
        self._claim_lost = False
        self._abandoned = False
        self._created = threading.Event()  # the ids are known and committed: write away
        if ids is not None:
            self._created.set()
        self._wake = threading.Event()
        self._write_due = False  # flush() wants a write before the flush period is over
        self._flowing = False  # the last write found finished tasks
        self.finished = threading.Event()
        self._flushes = threading.Condition()
        self._cycles_started = self._cycles_ended = 0
        self._thread = threading.Thread(target=self._main, name="ceranubis-project", daemon=True)

    def start(self) -> None:
        """Start the run thread (it submits, records, and finishes the project)."""
        self._fn_id = self.executor.register_function(self.fn)  # before any task can finish
        self._thread.start()

    def created(self, ids: Sequence[int]) -> None:
        """The project's insert committed: its arguments have these ids (``args`` order);
        the run may now write."""
        self.ids = ids
        self._created.set()
        self._wake.set()

    def abandon(self) -> None:
        """The project's insert failed: cancel what was submitted, write nothing, end."""
        self.cancelling = True
        self._stop_submitting = True
        self._abandoned = True
        self._wake.set()
        self.finished.wait(SETTLE_SECONDS)

    # ------------------------------------------------------------------ any thread

    @property
    def live(self) -> bool:
        """True until the run has written its final state."""
        return not self.finished.is_set()

    def counts(self) -> dict[str, int]:
        """Arguments per state, from memory (no I/O)."""
        with self._lock:
            counts = self.tally.counts
            done, failed, cancelled = counts["done"], counts["failed"], counts["cancelled"]
        done += self.done_before
        running = min(self._running_now(), self.total - done - failed - cancelled)
        pending = self.total - done - failed - cancelled - running
        return dict(pending=pending, running=running, done=done, failed=failed, cancelled=cancelled)

    def cancel(self) -> None:
        """Cancel pending arguments, stop running ones, keep finished results; then settle."""
        self.cancelling = True
        self._stop_submitting = True
        self._wake.set()
        self.finished.wait(SETTLE_SECONDS)

    def flush(self) -> None:
        """Return once every outcome known now is in the store (bounded)."""
        if not self.live:
            return
        with self._flushes:
            target = self._cycles_started + 1
            self._write_due = True
            self._wake.set()
            self._flushes.wait_for(
                lambda: self._cycles_ended >= target or not self.live, SETTLE_SECONDS
            )

    def stop_at_exit(self) -> None:
        """The interpreter is exiting: write what is known and leave the rest pending."""
        self._exiting = True
        self._stop_submitting = True
        self._wake.set()
        self.finished.wait(EXIT_SECONDS)

    def _running_now(self) -> int:
        spans = self._spans
        running = 0
        for task in self.executor.scheduler.in_flight_threadsafe():
            lo = spans.get(task.task_id)
            if lo is not None:
                running += self._span(lo)[1] - lo
        return running

    def _on_finished(self, record: TaskRecord) -> None:
        """Scheduler listener: a task is finished (its slot is set next); we keep ours.

        Ours are those with a span: other runs and ``map`` may call the same function
        on the same executor."""
        if record.task_id in self._spans:
            self._finished.append(record)
            self._seen += 1
            if self._next < len(self.args):
                if self._in_flight() <= SUBMIT_LOW and not self._wake.is_set():
                    self._wake.set()  # submit more before the nodes run dry
            elif self._seen == self._submitted:
                self._wake.set()  # the final write need not wait for the next flush

    def _in_flight(self) -> int:
        return self._submitted - self._seen

    # ------------------------------------------------------------------ run thread

    def _main(self) -> None:
        self._listen(True)
        try:
            self._loop()
            self._finish()
        except Exception:  # the run thread must end; the store keeps what it got
            log.exception("project %d: the run thread failed", self.project_id)
            self.final_state = "stopped"
        finally:
            self._listen(False)
            if self.owns_executor:
                self.executor.shutdown(wait=not self._exiting, stop_running=True)
            self.store.close()
            self.finished.set()
            with self._flushes:
                self._flushes.notify_all()
            self.notify()

    def _listen(self, on: bool) -> None:
        scheduler = self.executor.scheduler
        if on:
            scheduler.add_listener(self._on_finished)
        else:
            scheduler.remove_listener(self._on_finished)

    def _loop(self) -> None:
        next_beat = next_write = 0.0
        while True:
            self._wake.clear()  # before the work: a wake during it starts the next cycle
            with self._flushes:
                self._cycles_started += 1
            if self.cancelling and not self._swept:
                self._sweep()
            if self._submitting():
                self._submit_more()
            # Not before the project's rows are committed; while submitting (woken each
            # SUBMIT_LOW tasks) only once a flush period: each transaction costs ~1 ms.
            now = time.monotonic()
            if self._created.is_set() and (
                now >= next_write or self._write_due or self.cancelling or not self._submitting()
            ):
                self._write_due = False
                self._write()
                next_write = now + FLUSH_SECONDS
                if time.monotonic() >= next_beat:
                    self._beat()
                    next_beat = time.monotonic() + HEARTBEAT_SECONDS
            with self._flushes:
                self._cycles_ended += 1
                self._flushes.notify_all()
            if self._abandoned or self._exiting or self._settled():
                return
            pause = self._pause()
            if pause:
                self._wake.wait(pause)

    def _pause(self) -> float:
        """Seconds to sleep before the next cycle unless woken (0: go on at once)."""
        if self._submitting():
            return FLUSH_SECONDS if self._in_flight() >= SUBMIT_AHEAD else 0.0
        tail = self._flowing and self._in_flight()
        return TAIL_FLUSH_SECONDS if tail else FLUSH_SECONDS

    def _submitting(self) -> bool:
        return not self._stop_submitting and self._next < len(self.args)

    def _settled(self) -> bool:
        submitted_all = self._stop_submitting or self._next >= len(self.args)
        with self._lock:
            resolved = self.tally.resolved_tasks
        return (
            submitted_all
            and self._created.is_set()
            and resolved == self._submitted
            and not self._finished
            and not self._not_yet
        )

    def _submit_more(self) -> None:
        """Submit tasks until SUBMIT_AHEAD are in flight (or none are left)."""
        room = SUBMIT_AHEAD - self._in_flight()
        end = min(self._next + room * self.chunksize, len(self.args))
        while self._next < end and not self._stop_submitting:
            stop = min(self._next + SUBMIT_BATCH * self.chunksize, end)
            starts = range(self._next, stop, self.chunksize)
            records = [self._record(lo) for lo in starts]
            # Registered and counted first: the scheduler's listener knows our tasks by
            # their spans, and compares what it saw with what we submitted.
            spans = self._spans
            for lo, record in zip(starts, records, strict=True):
                spans[record.task_id] = lo
            self._submitted += len(records)
            try:
                self.executor.submit_prepared(records)
            except (RuntimeError, CeranubisError) as error:  # executor shut down or broken
                self._submitted -= len(records)
                for record in records:
                    del spans[record.task_id]
                log.warning("project %d: stopped submitting: %s", self.project_id, error)
                self._stop_submitting = True
                return
            self._next = stop

    def _record(self, lo: int) -> TaskRecord:
        """The task of the arguments from ``lo`` (one, or a chunk of them)."""
        payload: p.Buffer
        if self.chunksize == 1:
            blob = self.blobs[lo]  # a view, not a copy: a big argument is not doubled
            kind, codec, payload = p.ARGS, blob[0], memoryview(blob)[1:]
        else:
            kind = p.CHUNK
            codec, payload = dumps_inband(list(self.args[lo : self._span(lo)[1]]))
        return self.executor.prepared_task(
            self.options, self._fn_id, ResultSlot(), kind, codec, payload
        )

    def _sweep(self) -> None:
        """Cancel this run's unfinished tasks (we are the only submitter: none slips by)."""
        self._swept = True
        task_ids = list(self._spans)
        scheduler = self.executor.scheduler
        if task_ids and not scheduler.loop.is_closed():
            scheduler.cancel_threadsafe(task_ids)

    def _write(self) -> None:
        self._flowing = self._collect()
        if self._flowing:
            self.notify()
        running = self._running_rows()
        try:
            if self._unwritten or self._unwritten_done:
                self.store.record_rows(self._unwritten, self._unwritten_done)
            if running:
                self.store.mark_running(running)
        except StoreError as error:
            log.warning("project %d: %s; retrying", self.project_id, error)
            return
        self._unwritten.clear()
        self._unwritten_done.clear()

    def _wall(self, monotonic: float) -> float | None:
        return monotonic + self._clock if monotonic else None

    def _running_rows(self) -> list[tuple[int, str, float]]:
        """``(arg_id, host, started)`` of tasks in flight for RUNNING_MARK_SECONDS and not
        marked yet."""
        rows: list[tuple[int, str, float]] = []
        spans, marked = self._spans, self._marked
        before = time.monotonic() - RUNNING_MARK_SECONDS
        for task in self.executor.scheduler.in_flight_threadsafe():
            lo = spans.get(task.task_id)
            if task.started > before or task.task_id in marked or lo is None:
                continue
            marked.add(task.task_id)
            started = self._wall(task.started) or time.time()
            hi = self._span(lo)[1]
            rows.extend((arg_id, task.host, started) for arg_id in self.ids[lo:hi])
        return rows

    def _beat(self) -> None:
        try:
            state = self.store.heartbeat(self.project_id, self.client)
        except StoreError as error:
            log.warning("project %d: heartbeat failed: %s", self.project_id, error)
            return
        if state is None and not self._claim_lost:
            log.warning(
                "project %d was removed or resumed elsewhere: stopping here", self.project_id
            )
            self._claim_lost = True
            self._cancel_from_thread()
        elif state == "cancelled" and not self.cancelling:
            log.info("project %d was cancelled from another process", self.project_id)
            self._cancel_from_thread()

    def _cancel_from_thread(self) -> None:
        self.cancelling = True
        self._stop_submitting = True
        self._sweep()

    def _finish(self) -> None:
        if self._abandoned or not self._created.is_set():
            if not self._swept:
                self._sweep()
            self.final_state = "stopped"  # nothing of it is in the store
            return
        deadline = time.monotonic() + (EXIT_SECONDS if self._exiting else SETTLE_SECONDS)
        while (self._unwritten or self._unwritten_done) and time.monotonic() < deadline:
            time.sleep(FLUSH_SECONDS)
            self._write()
        if self._claim_lost:
            self.final_state = "stopped"
        elif self._exiting:
            self.final_state = "stopped"
            self.store.set_state(self.project_id, "stopped", release=True)
        else:
            self._write_final_state()

    def _all_done(self) -> bool:
        """Every argument is done, and written: by this run or before it."""
        written = not (self._unwritten or self._unwritten_done)
        return written and not self.cancelling and self.counts()["done"] == self.total

    def _write_final_state(self) -> None:
        if self.cancelling:
            self.store.cancel_unfinished(self.project_id)
        if self._all_done():
            self.final_state = "done"  # no need to count 20,000 rows to know it
        else:
            counts = self.store.counts(self.project_id)
            self.final_state = final_state(counts, self.cancelling)
        self.store.set_state(self.project_id, self.final_state, release=True)


__all__ = ["ARGUMENT_STATES", "ProjectRun", "decode", "encode", "error_text"]
