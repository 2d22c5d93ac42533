"""A project's live run in this process: submit its arguments, record their outcomes.

::

    kernel thread         run thread (this module)              loop thread (scheduler)
    ─────────────         ────────────────────────              ───────────────────────
    commit / resume ─► submit, a window in flight ─► executor ─► nodes
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
:class:`~concurrent.futures.Future`: nobody waits on one in memory, so each carries a
:class:`~ceranubis_jupyter.cluster.tasks.ResultSlot`. An argument travels as the bytes the
store holds (task kind ``ARGS``), and a result is stored as the bytes the worker sent:
neither is pickled twice.

A run is given a :class:`RunPlan` (what to run, where) and a :class:`RunStart` (what the
store holds when it starts). Its life is one state, changed in one place (``lifecycle.py``).
A new project starts submitting while the kernel thread still inserts its arguments
(``STARTING``: the run has no ids and writes nothing) until :meth:`ProjectRun.created`
hands it the ids of the committed rows, or stops without a trace on
:meth:`ProjectRun.abandon` when that insert failed. Tasks that finish quickly are never
marked ``running`` in the store: only those still in flight after RUNNING_MARK_SECONDS.
Counting finished tasks and building their rows is the run's
:class:`~ceranubis_jupyter.projects.rows.OutcomeCollector`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..cluster.executor import NodeExecutor
from ..cluster.tasks import ResultSlot, TaskRecord
from ..errors import CeranubisError, StoreError
from ..exits import Stage, on_exit
from ..wire import protocol as p
from ..wire.serialize import dumps_inband
from .lifecycle import (
    CANCELLED,
    ENDS_AT_ONCE,
    SUBMITTING,
    Cycles,
    Lifecycle,
    RunEvent,
    RunState,
)
from .records import this_client
from .rows import OutcomeCollector, final_state, stored_payload
from .store import Store
from .window import FlightWindow

log = logging.getLogger("ceranubis")

# Seconds between writes of outcomes: longer batches mean fewer transactions, shorter ones
# lose less to a crash and keep other readers more current.
FLUSH_SECONDS = 0.1
# Seconds between heartbeats: other processes call a client gone after
# records.STALE_SECONDS of silence; a remote cancel is noticed within this time.
HEARTBEAT_SECONDS = 1.0
# Arguments finished and not collected at most before submitting pauses (they wait for the
# insert to commit): more lets a run go on during a long insert, and holds more results.
UNCOLLECTED_ARGUMENTS = 200_000
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


@dataclass(frozen=True)
class RunPlan:
    """What a run does: ``fn(*a)`` for each ``a`` in ``args``, on ``executor``.

    ``blobs`` are the same arguments as the store holds them (:func:`~ceranubis_jupyter.
    projects.rows.encode`), the payloads of single-argument tasks (empty when ``chunksize``
    > 1: a chunk pickles its tuples together); the executor is shut down at the end when
    ``owns_executor``; ``chunksize`` arguments go in one task; ``timeout``: seconds per task
    (None: none).
    """

    fn: Callable[..., Any]
    args: Sequence[tuple[Any, ...]]
    blobs: Sequence[bytes]
    executor: NodeExecutor
    owns_executor: bool
    chunksize: int = 1
    timeout: float | None = None
    ready_until: Callable[[int, int], int] | None = None  # refs (:mod:`.refs`) wait for this


@dataclass(frozen=True)
class RunStart:
    """What the store holds when a run starts: its counts (done ones stay done), the ids
    of the arguments to run (``None`` while a new project's insert is still open), and when
    the project's first task started (for its elapsed time)."""

    counts: dict[str, int]
    ids: Sequence[int] | None
    first_started: float

    @classmethod
    def new(cls, count: int, reused: int = 0) -> RunStart:
        """A new project of ``count`` arguments to run and ``reused`` ones done already,
        whose insert is under way (no store reads: they would wait for it)."""
        counts = dict.fromkeys(("running", "failed", "cancelled"), 0)
        return cls(dict(counts, pending=count, done=reused), None, time.time())

    @classmethod
    def stored(cls, store: Store, project_id: int, ids: Sequence[int]) -> RunStart:
        """A stored project about to run the arguments ``ids`` again."""
        previous = store.host_stats(project_id)
        first = min([time.time(), *(stats.first_started for stats in previous)])
        return cls(store.counts(project_id), ids, first)


_live_runs: weakref.WeakSet[ProjectRun] = weakref.WeakSet()


class ProjectRun:
    """Runs a project's arguments on an executor and records every outcome once.

    Args:
        plan: what to run, and where.
        start: what the store holds now (``start.ids`` is ``None`` for a new project whose
            insert is still open: the run submits, and writes once :meth:`created` is
            called).
        store: a connection of its own (the run thread writes through it, then closes it).
        project_id: the project's row id; :attr:`client` is this process's claim on it.
    """

    def __init__(self, plan: RunPlan, start: RunStart, store: Store, project_id: int) -> None:
        self.plan, self.store, self.project_id = plan, store, project_id
        self.executor = plan.executor
        self.client = this_client()
        self.first_started = start.first_started
        self.options = plan.executor.options(timeout=plan.timeout).task_options
        clock = time.time() - time.monotonic()
        self.outcomes = OutcomeCollector(plan.args, plan.chunksize, start.counts, clock)
        self.outcomes.ids = start.ids
        self._wake = threading.Event()
        self.life = Lifecycle(
            RunState.STARTING if start.ids is None else RunState.RUNNING, self._wake
        )
        self.final_state = "running"  # the project's state once the run ended
        self.finished = threading.Event()  # set once the run thread ended
        self._cycles = Cycles()
        self._next_marks = 0.0  # when to look for arguments to mark running next
        self._reacted = self.state  # the state whose entry the run thread acted on
        self._flowing = False  # the last write found finished tasks
        self._notify: Callable[[], None] = lambda: None
        # Submission: the next argument to submit, the end of what can be, the tasks
        # submitted and the ones the scheduler finished (loop thread only).
        self._next, self._end = 0, len(plan.args)
        self._submitted = self._seen = 0
        # Tasks in flight at most (the listener wakes the run thread when it is down to
        # window.low); tasks submitted and not collected at most.
        self._window = FlightWindow(plan.chunksize)
        self._held_most = self._window.most + max(1, UNCOLLECTED_ARGUMENTS // plan.chunksize)
        self._fn_id = -1
        self._thread = threading.Thread(target=self._main, name="ceranubis-project", daemon=True)

    def start(self, notify: Callable[[], None]) -> None:
        """Start the run thread (it submits, records, and finishes the project).

        ``notify`` is called from the run thread after finished arguments were counted (at
        most every ~0.1 s) and once more when the run ends.
        """
        self._notify = notify
        self._fn_id = self.executor.register_function(self.plan.fn)  # before any task ends
        _live_runs.add(self)
        self._thread.start()

    def created(self, ids: Sequence[int]) -> None:
        """The project's insert committed: its arguments have these ids (``args`` order);
        the run may now write."""
        self.outcomes.ids = ids
        self.life.on(RunEvent.CREATED)

    def abandon(self) -> None:
        """The project's insert failed: cancel what was submitted, write nothing, end."""
        self.life.on(RunEvent.ABANDON)
        self.finished.wait(SETTLE_SECONDS)

    # ------------------------------------------------------------------ any thread

    @property
    def live(self) -> bool:
        """True until the run has written its final state."""
        return self.state is not RunState.FINISHED

    def counts(self) -> dict[str, int]:
        """Arguments per state, from memory (no I/O)."""
        return self.outcomes.counts(self.executor.scheduler.in_flight_threadsafe())

    def cancel(self) -> None:
        """Cancel pending arguments, stop running ones, keep finished results; then settle."""
        self.life.on(RunEvent.CANCEL)
        self.finished.wait(SETTLE_SECONDS)

    def flush(self) -> None:
        """Return once every outcome known now is in the store (bounded)."""
        if self.live:
            self._cycles.wait_for_write(self._wake, lambda: not self.live, SETTLE_SECONDS)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the run ended; ``False`` on timeout."""
        return self.finished.wait(timeout)

    def stop_at_exit(self) -> None:
        """The interpreter is exiting: write what is known and leave the rest pending."""
        self.life.on(RunEvent.EXIT)
        self.finished.wait(EXIT_SECONDS)

    @property
    def cycles(self) -> int:
        """Cycles the run thread began so far (each wake-up is one)."""
        return self._cycles.started

    @property
    def state(self) -> RunState:
        """Where the run is in its life."""
        return self.life.state

    def _on_finished(self, record: TaskRecord) -> None:
        """Scheduler listener (loop thread): a task is finished (its slot is set next)."""
        if self.outcomes.arrived(record):
            self._seen += 1
            if self._next < self._end:
                if self.in_flight <= self._window.low and not self._wake.is_set():
                    self._wake.set()  # submit more before the nodes run dry
            elif self._seen == self._submitted:
                self._wake.set()  # the final write need not wait for the next flush

    @property
    def in_flight(self) -> int:
        """Tasks submitted and not handed back by the scheduler yet."""
        return self._submitted - self._seen

    # ------------------------------------------------------------------ run thread

    def _main(self) -> None:
        scheduler = self.executor.scheduler
        scheduler.add_listener(self._on_finished)
        try:
            self._loop()
            self._finish()
        except Exception:  # the run thread must end; the store keeps what it got
            log.exception("project %d: the run thread failed", self.project_id)
            self.final_state = "stopped"
        finally:
            scheduler.remove_listener(self._on_finished)
            if self.plan.owns_executor:
                exiting = self.state is RunState.EXITING
                self.executor.shutdown(wait=not exiting, stop_running=True)
            self.store.close()
            self.life.on(RunEvent.END)
            self.finished.set()
            self._cycles.release()
            self._notify()

    def _loop(self) -> None:
        next_beat = next_write = 0.0
        while True:
            self._wake.clear()  # before the work: a wake during it starts the next cycle
            self._cycles.begin()
            self._react()
            if self._submitting():
                self._submit_more()
            # Not before the project's rows are committed. While submitting: once a flush
            # period, or whenever finished tasks wait (backlog), so writes follow each
            # other while results flow. Fewer, bigger writes were slower (0.88 -> 0.79 of
            # map): waiting records outlive young collections (benchmarks/README).
            now = time.monotonic()
            if self._created() and self._write_now(now >= next_write):
                self._write()
                next_write = now + FLUSH_SECONDS
                if time.monotonic() >= next_beat:
                    self._beat()
                    next_beat = time.monotonic() + HEARTBEAT_SECONDS
            self._cycles.end()
            if self.state in ENDS_AT_ONCE or self._settled():
                return
            pause = self._pause()
            if pause:
                self._wake.wait(pause)

    def _react(self) -> None:
        """Act on entering a new state: one that cancels cancels the unfinished tasks."""
        state = self.state
        if state is not self._reacted and state in CANCELLED:
            self._sweep()
        self._reacted = state

    def _write_now(self, period_over: bool) -> bool:
        asked = self._cycles.take_write_request()
        if asked or period_over or self.state in CANCELLED:
            return True
        return not self._submitting() or self.outcomes.backlog()

    def _created(self) -> bool:
        return self.outcomes.ids is not None

    def _pause(self) -> float:
        """Seconds to sleep before the next cycle unless woken (0: go on at once)."""
        if self._created() and self.outcomes.backlog():
            return 0.0  # the last write left finished tasks to collect
        if self._submitting():
            full = self.in_flight >= self._window.ahead or self._room() <= 0
            return FLUSH_SECONDS if full else 0.0
        tail = self._flowing and self.in_flight
        return TAIL_FLUSH_SECONDS if tail else FLUSH_SECONDS

    def _submitting(self) -> bool:
        return self.state in SUBMITTING and self._next < self._end

    def _settled(self) -> bool:
        return (
            not self._submitting()
            and self._created()
            and self.outcomes.resolved_tasks() == self._submitted
            and self.outcomes.idle()
        )

    def _submit_more(self) -> None:
        """Submit tasks until enough are in flight (or none are left)."""
        self._window.follow(list(self.executor.scheduler.links))
        chunksize = self.plan.chunksize
        room = min(self._window.ahead - self.in_flight, self._room())
        if room <= 0:
            return  # full: neither a task nor a look at the store for referred results
        end = min(self._next + room * chunksize, self._end)
        if self.plan.ready_until is not None:  # arguments that wait for stored results
            end = self.plan.ready_until(self._next, end)
        while self._next < end and self.state in SUBMITTING:
            stop = min(self._next + SUBMIT_BATCH * chunksize, end)
            starts = range(self._next, stop, chunksize)
            records = [self._task(lo) for lo in starts]
            task_ids = [record.task_id for record in records]
            # Tracked and counted first: the scheduler's listener knows our tasks by their
            # spans, and compares what it saw with what we submitted.
            self.outcomes.track(task_ids, starts)
            self._submitted += len(records)
            try:
                self.executor.submit_prepared(records)
            except (RuntimeError, CeranubisError) as error:  # executor shut down or broken
                self._submitted -= len(records)
                self.outcomes.untrack(task_ids)
                log.warning("project %d: stopped submitting: %s", self.project_id, error)
                self._end = self._next  # what is left stays pending
                return
            self._next = stop

    def _room(self) -> int:
        """Tasks that may be submitted before the finished ones not collected yet (and
        those in flight) reach their bound."""
        return self._held_most - (self._submitted - self.outcomes.resolved_tasks())

    def _task(self, lo: int) -> TaskRecord:
        """The task of the arguments from ``lo`` (one, or a chunk of them)."""
        payload: p.Buffer
        if self.plan.chunksize == 1:
            blob = self.plan.blobs[lo]
            kind, codec, payload = p.ARGS, blob[0], stored_payload(blob)
        else:
            kind = p.CHUNK
            codec, payload = dumps_inband(list(self.plan.args[lo : self.outcomes.end(lo)]))
        return self.executor.prepared_task(
            self.options, self._fn_id, ResultSlot(), kind, codec, payload
        )

    def _sweep(self) -> None:
        """Cancel this run's unfinished tasks (we are the only submitter: none slips by)."""
        task_ids = self.outcomes.unresolved()
        scheduler = self.executor.scheduler
        if task_ids and not scheduler.loop.is_closed():
            scheduler.cancel_threadsafe(task_ids)

    def _running_marks(self) -> list[tuple[int, str, float]]:
        """Arguments in flight for RUNNING_MARK_SECONDS, not marked yet: asked of the loop
        thread at most once per RUNNING_MARK_SECONDS, not on every (10 ms) write."""
        now = time.monotonic()
        if now < self._next_marks:
            return []
        self._next_marks = now + RUNNING_MARK_SECONDS
        in_flight = self.executor.scheduler.in_flight_threadsafe()
        return self.outcomes.running_marks(in_flight, now - RUNNING_MARK_SECONDS)

    def _write(self) -> None:
        state, outcomes = self.state, self.outcomes
        self._flowing = outcomes.collect(
            cancelling=state in CANCELLED, results_only=state is RunState.ORPHANED
        )
        if self._flowing:
            self._notify()
        running = self._running_marks()
        try:
            if outcomes.outcomes or outcomes.done_values:
                self.store.record_outcomes(outcomes.outcomes, outcomes.done_values)
            if running:
                self.store.mark_running(running)
        except StoreError as error:
            log.warning("project %d: %s; retrying", self.project_id, error)
            return
        outcomes.written()

    def _beat(self) -> None:
        try:
            state = self.store.heartbeat(self.project_id, self.client)
        except StoreError as error:
            log.warning("project %d: heartbeat failed: %s", self.project_id, error)
            return
        if state is None and self.life.on(RunEvent.CLAIM_LOST):
            log.warning(
                "project %d was removed or resumed elsewhere: stopping here", self.project_id
            )
        elif state == "cancelled" and self.life.on(RunEvent.CANCEL):
            log.info("project %d was cancelled from another process", self.project_id)

    def _finish(self) -> None:
        if not self._created() or self.state is RunState.ABANDONED:
            if self._reacted not in CANCELLED:
                self._sweep()
            self.final_state = "stopped"  # nothing of it is in the store
            return
        exiting = self.state is RunState.EXITING
        deadline = time.monotonic() + (EXIT_SECONDS if exiting else SETTLE_SECONDS)
        while self._unwritten() and time.monotonic() < deadline:
            if not self.outcomes.backlog():  # else collect the rest at once
                time.sleep(FLUSH_SECONDS)
            self._write()
        state = self.state
        if state is RunState.ORPHANED:
            self.final_state = "stopped"  # the project's state is another client's now
        elif state is RunState.EXITING:
            self.final_state = "stopped"
            self.store.set_state(self.project_id, "stopped", release=True)
        else:
            self._write_final_state(cancelled=state is RunState.CANCELLING)

    def _unwritten(self) -> bool:
        outcomes = self.outcomes
        return bool(outcomes.outcomes or outcomes.done_values or outcomes.backlog())

    def _write_final_state(self, cancelled: bool) -> None:
        if cancelled:
            self.store.cancel_unfinished(self.project_id)
        if not cancelled and not self._unwritten() and self.counts()["done"] == self.total:
            self.final_state = "done"  # every argument is done and written: no need to count
        else:
            counts = self.store.counts(self.project_id)
            self.final_state = final_state(counts, cancelled)
        self.store.set_state(self.project_id, self.final_state, release=True)

    @property
    def total(self) -> int:
        """Arguments of the project (those run before included)."""
        return self.outcomes.total


def _stop_live_runs() -> None:
    for run in list(_live_runs):
        if run.live:
            run.stop_at_exit()


# The exit path runs this first (exits.Stage.RUNS): runs write while executors still work.
on_exit(Stage.RUNS, _stop_live_runs)

__all__ = ["ProjectRun", "RunPlan", "RunStart"]
