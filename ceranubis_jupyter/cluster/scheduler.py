"""The scheduler: an asyncio event loop in a background thread that moves tasks to nodes.

::

    kernel thread                     loop thread (this module)                 nodes
    ─────────────                     ─────────────────────────                 ─────
    submit() ─► TaskRecord ─► incoming ─► pending (heap by priority) ─► NodeLink ─► node
                (deque; one wake-up       │  dispatch while a node       │ credit =
                 per burst)               │  has credit                  │ workers*prefetch
                                          │                              │
    Future ◄── value, or the error ◄──────┴── outcomes.failure_of ◄── Results
               (listeners told first)         (None: pending again)

How it works:
1. ``submit_threadsafe`` appends a ready-serialized :class:`TaskRecord` to ``incoming`` and
   wakes the loop once per burst (``call_soon_threadsafe`` costs more than the append).
2. The loop moves incoming records into ``pending`` and dispatches: every node takes as many
   tasks as it has free credit, functions first (each sent once per node), in one frame.
3. Each :class:`NodeLink` reads frames; a result frees credit and ends its task: its value
   goes to the future, else the error :mod:`~.outcomes` names (a crashed worker with
   retries left: back to pending). Listeners hear of each task just before its future.
4. A lost node (EOF, silence, garbage): its tasks go back to pending (attempts counted),
   the link restarts it; futures break only when no node can start.
5. Hosts come and go while work runs (an added host gets a link at once; a removed one
   drains its tasks). The kernel thread never blocks on the loop unless asked to wait.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError

from ..errors import (
    BrokenCeranubisExecutor,
    CeranubisError,
    ConfigError,
    HostError,
    NoHostsAvailable,
)
from ..wire import protocol as p
from ..wire.serialize import loads
from .dependencies import Dependencies
from .echo import echo_output
from .fastpaths import ALL_ON, FastPaths
from .filesync import FileRegistry
from .link import SILENCE_TIMEOUT, HostInfo, NodeLink
from .listeners import Listeners
from .loopthread import LoopThread
from .mapping import MapSlot, pickled_result
from .modules import CodeRegistry
from .outcomes import failure_of, lost_with_node, no_host_left, no_such_group, unpickled_result
from .shares import fair_shares
from .tasks import InFlight, PendingQueue, ResultSlot, TaskListener, TaskRecord, settle
from .transport import Transport

log = logging.getLogger("ceranubis")


# How often a draining host is checked for its last running task.
DRAIN_POLL_SECONDS = 0.05
# Seconds another thread waits for a snapshot from the loop: far above a busy loop's turn,
# short enough that a stuck loop cannot hang a progress line.
SNAPSHOT_TIMEOUT = 5.0


class Scheduler:
    """Owns the loop thread, the pending queue and the node links."""

    def __init__(
        self,
        transports: Sequence[Transport],
        *,
        silence_timeout: float = SILENCE_TIMEOUT,
        fast_paths: FastPaths = ALL_ON,
        max_data_frame: int = p.MAX_DATA_FRAME,
    ) -> None:
        if not transports:
            raise CeranubisError("a scheduler needs at least one transport")
        self.silence_timeout = silence_timeout
        self.fast_paths = fast_paths
        self.max_data_frame = max_data_frame
        self.loop_thread = LoopThread()
        self.transports = list(transports)
        self.links: list[NodeLink] = []
        self.pending = PendingQueue()
        self.incoming: collections.deque[TaskRecord] = collections.deque()
        self.functions: dict[int, bytes] = {}
        self.code = CodeRegistry()  # the user's modules that travel (modules.py)
        self.files = FileRegistry()  # the data files that travel (filesync.py)
        self.listeners = Listeners()
        self.outstanding = 0
        self.broken: BaseException | None = None
        self.host_errors: dict[str, HostError] = {}
        self._wakeup_pending = False
        self._ids = itertools.count(1)
        self._idle_lock = threading.Lock()  # counts: a Condition's ``with`` is Python code
        self._idle = threading.Condition(self._idle_lock)
        self.dependencies = Dependencies(self)  # tasks given futures as arguments
        self.loop_thread.call_threadsafe(self._start_links)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.loop_thread.loop

    def next_task_id(self) -> int:
        """A fresh task id (thread-safe: ``itertools.count`` is atomic under the GIL)."""
        return next(self._ids)

    # ------------------------------------------------------------------ kernel-thread API

    def add_function_threadsafe(self, fn_id: int, blob: bytes) -> None:
        """Register a function's bytes before tasks refer to it."""
        self.functions[fn_id] = blob

    def submit_threadsafe(self, record: TaskRecord) -> None:
        """Queue a task from any thread; wakes the loop once per burst."""
        was_idle = self._count_in(1)
        self.incoming.append(record)
        self._take_or_wake(was_idle)

    def submit_many_threadsafe(self, records: Sequence[TaskRecord]) -> None:
        """Queue tasks from any thread: one lock, one wake-up (none for one task, idle)."""
        was_idle = self._count_in(len(records))
        self.incoming.extend(records)
        self._take_or_wake(was_idle and len(records) == 1)  # a queue daemon's lone claim

    def _take_or_wake(self, lone: bool) -> None:
        """Send an idle executor's lone task from this thread while the loop sleeps."""
        inline = lone and self.fast_paths.inline_submit
        if not (inline and self.loop_thread.run_if_asleep(self._take_incoming_directly)):
            self._wake_for_incoming()

    def _count_in(self, count: int) -> bool:
        """Count ``count`` more tasks outstanding; ``True`` if the executor was idle.

        Raises:
            BrokenCeranubisExecutor: no host is usable any more.
        """
        if self.broken is not None:
            raise BrokenCeranubisExecutor(str(self.broken)) from self.broken
        with self._idle_lock:
            self.outstanding += count
            return self.outstanding == count

    def _wake_for_incoming(self) -> None:
        """Have the loop take the incoming tasks: one wake-up per burst."""
        if not self._wakeup_pending:
            self._wakeup_pending = True
            self.loop_thread.call_threadsafe(self._take_incoming)

    def wait_idle_threadsafe(self, timeout: float | None = None) -> bool:
        """Block until every submitted task has finished; ``False`` on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self.outstanding == 0, timeout)

    def cancel_pending_threadsafe(self, stop_running: bool) -> None:
        """Cancel every task not yet on a node (and, if asked, stop those that are)."""
        self.loop_thread.run_threadsafe(self._cancel_all(stop_running)).result(timeout=30)

    def cancel_threadsafe(self, task_ids: Sequence[int]) -> None:
        """Stop these tasks wherever they are (pending ones are cancelled, running killed)."""
        self.loop_thread.run_threadsafe(self._cancel_ids(set(task_ids))).result(timeout=30)

    def add_listener(self, listener: TaskListener) -> None:
        """Call ``listener(record)`` on the loop thread as each task finishes (any thread)."""
        self.listeners.add(listener)

    def remove_listener(self, listener: TaskListener) -> None:
        """Stop calling ``listener`` (any thread); unknown listeners are ignored."""
        self.listeners.remove(listener)

    def in_flight_threadsafe(self) -> list[InFlight]:
        """A snapshot of the tasks on nodes now, taken on the loop thread."""
        if self.loop_thread.in_loop_thread():
            return self._in_flight()
        if self.loop.is_closed():
            return []
        try:
            return self.loop_thread.call_for_result(self._in_flight, SNAPSHOT_TIMEOUT)
        except (RuntimeError, TimeoutError):  # the loop stopped, or is stuck: nothing known
            return []

    def _in_flight(self) -> list[InFlight]:
        return [
            InFlight(record.task_id, link.host, record.started)
            for link in self.links
            for record in link.inflight.values()
        ]

    def hosts_threadsafe(self) -> list[HostInfo]:
        """A snapshot of every host's state; a host whose link the loop has not made yet
        shows as "starting" (so the hosts are known from the executor's first moment)."""
        links = list(self.links)
        started = {link.host for link in links}
        waiting = [HostInfo(t.host) for t in self.transports if t.host not in started]
        return [link.info for link in links] + waiting

    def add_hosts_threadsafe(self, transports: Sequence[Transport]) -> None:
        """Start nodes on more hosts while work runs."""
        known = {link.host for link in self.links if not link.closing}
        for transport in transports:
            if transport.host in known:
                raise ConfigError(f"host {transport.host!r} is already in the executor")
        self.loop_thread.run_threadsafe(self._add_links(transports)).result(timeout=30)

    def remove_hosts_threadsafe(self, hosts: Sequence[str], drain: bool) -> None:
        """Stop using hosts; with ``drain`` their running tasks finish first, else re-queue."""
        known = {link.host for link in self.links if not link.closing}
        unknown = [host for host in hosts if host not in known]
        if unknown:
            raise ConfigError(f"not hosts of this executor: {', '.join(unknown)}")
        self.loop_thread.run_threadsafe(self._remove_links(set(hosts), drain)).result(timeout=60)

    def close_threadsafe(self) -> None:
        """Shut every node down and stop the loop thread."""
        if self.loop.is_closed():
            return
        future = self.loop_thread.run_threadsafe(self._close())
        try:
            future.result(timeout=30)
        finally:
            self.loop_thread.stop()

    # ------------------------------------------------------------------ loop side

    def _start_links(self) -> None:
        for transport in self.transports:
            self._start_link(transport)

    def _start_link(self, transport: Transport) -> NodeLink:
        link = NodeLink(self, transport)
        self.links.append(link)
        link.start()
        return link

    async def _add_links(self, transports: Sequence[Transport]) -> None:
        for transport in transports:
            self._start_link(transport)

    async def _remove_links(self, hosts: set[str], drain: bool) -> None:
        leaving = [link for link in self.links if link.host in hosts and not link.closing]
        for link in leaving:
            link.draining = True
        if drain:
            await self._wait_drained(leaving)
        await asyncio.gather(*(link.close() for link in leaving), return_exceptions=True)
        self.links = [link for link in self.links if link not in leaving]
        self._fail_stranded_groups()
        self.dispatch()

    async def _wait_drained(self, links: list[NodeLink]) -> None:
        while any(link.inflight and link.ready for link in links):
            await asyncio.sleep(DRAIN_POLL_SECONDS)

    def _take_incoming(self) -> None:
        self._wakeup_pending = False
        if self.broken is not None:  # queued just as the executor broke: fail, never wait
            self._fail_incoming()
            return
        incoming = self.incoming
        while incoming:
            record = incoming.popleft()
            if record.group is not None and not self._group_exists(record.group):
                self.fail(record, no_such_group(record))
            elif record.inputs is not None:
                self.dependencies.hold(record)
            else:
                self.pending.push(record)
        self.dispatch()

    def _take_incoming_directly(self) -> bool:
        """:meth:`_take_incoming` from a submitting thread while the loop sleeps (see
        :meth:`LoopThread.run_if_asleep`); ``False`` if a node's channel forbids it.

        Only an idle executor's first task goes this way: a lone task (a sequential
        round trip) skips waking the loop thread, while bursts still travel in batches.
        """
        links = self.links  # empty until the loop has run _start_links: wait for it
        if not links or not all(link.direct_writes for link in links):
            return False
        self._take_incoming()
        return True

    def _group_exists(self, group: str) -> bool:
        return any(link.group == group and not link.dead for link in self.links)

    def dispatch(self) -> None:
        """Give pending tasks to nodes with free credit, one frame per node."""
        if not self.pending:
            return
        wanted = len(self.pending)
        open_links = [link for link in self.links if link.free >= min(wanted, link.batch_floor)]
        for link, count in fair_shares(open_links, len(self.pending)):
            self._send_batch(link, count)
        for link in open_links:  # what the shares left: tasks pinned to other groups
            if self.pending and link.free > 0:
                self._send_batch(link, link.free)

    def _send_batch(self, link: NodeLink, count: int) -> None:
        batch = self._take_for(link, count)
        if batch:
            link.send_tasks(batch, self.functions)

    def _take_for(self, link: NodeLink, count: int) -> list[TaskRecord]:
        batch: list[TaskRecord] = []
        while len(batch) < count:
            record = self.pending.pop_for(link.group)
            if record is None:
                break
            if not record.dispatched:
                if not record.future.set_running_or_notify_cancel():
                    self._finished(record)
                    continue
                record.dispatched = True
            batch.append(record)
        return batch

    def on_node_ready(self, link: NodeLink) -> None:
        """A node finished its handshake: give it work."""
        self.host_errors.pop(link.host, None)
        self.dispatch()

    def on_node_failed(self, link: NodeLink, error: HostError) -> None:
        """A node could not start or was lost."""
        self.host_errors[link.host] = error

    def on_link_dead(self, link: NodeLink) -> None:
        """A host was given up on; once every host is, the executor is broken."""
        if all(other.dead for other in self.links):
            self._break(NoHostsAvailable(list(self.host_errors.values())))
        else:
            self._fail_stranded_groups()

    def _fail_stranded_groups(self) -> None:
        """Fail pending tasks whose group has no usable host left: they would wait forever."""
        stranded = self.pending.remove(
            lambda record: record.group is not None and not self._group_exists(record.group)
        )
        for record in stranded:
            self.fail(record, no_host_left(record, self._errors_of_group(record.group)))

    def _errors_of_group(self, group: str | None) -> list[HostError]:
        return [
            self.host_errors[link.host]
            for link in self.links
            if link.group == group and link.host in self.host_errors
        ]

    def _break(self, error: BaseException) -> None:
        self.broken = error
        broken = self._broken_error()
        for record in self.pending.remove(lambda record: True):
            self.fail(record, broken)
        self._fail_incoming()

    def _broken_error(self) -> BrokenCeranubisExecutor:
        broken = BrokenCeranubisExecutor(f"no host is usable: {self.broken}")
        broken.__cause__ = self.broken
        return broken

    def _fail_incoming(self) -> None:
        broken = self._broken_error()
        while self.incoming:
            self.fail(self.incoming.popleft(), broken)

    def on_results(self, link: NodeLink, results: tuple[p.Result, ...]) -> None:
        """Resolve futures for a batch of results, then refill the node; what running
        tasks printed goes to :func:`~.echo.echo_output`."""
        printed = [result for result in results if result.status == p.OUTPUT]
        if printed:
            echo_output(link.host, printed)
            results = tuple(result for result in results if result.status != p.OUTPUT)
        if results:
            link.note_results(len(results))
        for result in results:
            record = link.inflight.pop(result.task_id, None)
            if record is not None:
                record.output = result.output
                try:
                    self._resolve(link, record, result)
                except Exception:  # a malformed result: the link drops the node
                    link.put_back(record)  # ... and re-queues this task with the others
                    raise
        link.update_busy()
        self.dispatch()

    def _resolve(self, link: NodeLink, record: TaskRecord, result: p.Result) -> None:
        if result.status == p.OK:
            self._succeed(link, record, result)
        elif (error := failure_of(link.host, record, result)) is None:
            self._requeue(record)  # its worker died under it; retries are left
        elif self.code.retry_missing(record.task_id, error):
            self._requeue(record)  # a module a worker lacked is on its way: once more
        else:
            self.fail(record, error)

    def _succeed(self, link: NodeLink, record: TaskRecord, result: p.Result) -> None:
        future = record.future
        if type(future) is MapSlot and future.unawaited() and self.fast_paths.lazy_results:
            pickled = pickled_result(result, link.host, record)
            if pickled is not None:  # the consumer unpickles it when it takes it
                link.info.done += 1
                self._finished(record)
                if not future.done():
                    future.set_pickled(pickled)
                return
        try:
            value = loads(result.codec, result.payload, result.buffers)
        except Exception as error:
            self.fail(record, unpickled_result(link.host, record, error))
            return
        link.info.done += 1
        if type(future) is ResultSlot:
            future.keep_bytes(result)
        elif self.dependencies.held:
            self.dependencies.keep(record, result)
        self._finished(record)
        settle(future, value)

    def requeue_lost(
        self, link: NodeLink, records: list[TaskRecord], *, possibly_running: int = 0
    ) -> None:
        """A node went away: its in-flight tasks go back to pending.

        ``records`` are in dispatch order; only the first ``possibly_running`` of them count
        an attempt (within their retries), the others never started.
        """
        log.warning("[host=%s] node lost; %d tasks re-queued", link.host, len(records))
        for index, record in enumerate(records):
            error = lost_with_node(link.host, record, index < possibly_running)
            if error is None:
                self._requeue(record)
            else:
                self.fail(record, error)
        self.dispatch()

    def _requeue(self, record: TaskRecord) -> None:
        record.host = None
        self.pending.push(record)

    def fail(self, record: TaskRecord, error: BaseException) -> None:
        """End a task with ``error`` (listeners first, then its future)."""
        self._finished(record)
        if not record.future.done():
            record.future.set_exception(error)

    def _finished(self, record: TaskRecord) -> None:
        record.finished = time.monotonic()
        record.payload, record.buffers = b"", ()  # a held future must not pin its arguments
        if self.dependencies.held:
            self.dependencies.finished(record)
        self.listeners.tell(record)
        with self._idle_lock:
            self.outstanding -= 1
            if self.outstanding == 0:
                self._idle.notify_all()

    async def _cancel_all(self, stop_running: bool) -> None:
        self._take_incoming()
        waiting = self.pending.remove(lambda record: stop_running or not record.dispatched)
        for record in waiting:
            self.cancel_waiting(record)
        self.dependencies.cancel(None)
        if stop_running:
            for link in self.links:
                if link.inflight:
                    link.send_cancel(list(link.inflight))

    async def _cancel_ids(self, task_ids: set[int]) -> None:
        self._take_incoming()
        for record in self.pending.remove(lambda record: record.task_id in task_ids):
            self.cancel_waiting(record)
        self.dependencies.cancel(task_ids)
        for link in self.links:
            running = [task_id for task_id in link.inflight if task_id in task_ids]
            if running:
                link.send_cancel(running)

    def cancel_waiting(self, record: TaskRecord) -> None:
        """Cancel a task that is on no node (a re-queued one is already running: fail it)."""
        future = record.future
        if not future.cancel() and not future.done():
            future.set_exception(CancelledError(f"task {record.task_id} was cancelled"))
        self._finished(record)

    async def _close(self) -> None:
        outcomes = await asyncio.gather(
            *(link.close() for link in self.links), return_exceptions=True
        )
        for link, outcome in zip(self.links, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("[host=%s] closing the node failed: %r", link.host, outcome)
        self._break(BrokenCeranubisExecutor("the executor was shut down"))
