"""The scheduler: an asyncio event loop in a background thread that moves tasks to nodes.

::

    kernel thread                     loop thread (this module)                 nodes
    ─────────────                     ─────────────────────────                 ─────
    submit() ─► TaskRecord ─► incoming ─► pending (heap by priority) ─► NodeLink ─► node
                (deque; one wake-up       │  dispatch while a node       │ credit =
                 per burst)               │  has credit                  │ workers*prefetch
    Future ◄──── set_result / exception ◄─┴──────── Results ◄────────────┘

How it works:

1. ``submit_threadsafe`` appends a ready-serialized :class:`TaskRecord` to ``incoming`` and
   wakes the loop once per burst (``call_soon_threadsafe`` costs more than the append).
2. The loop moves incoming records into ``pending`` and dispatches: every node takes as many
   tasks as it has free credit, functions first (each sent once per node), in one frame.
3. Each :class:`NodeLink` reads frames; a result resolves its future and frees credit.
4. A node that ends (EOF, silence, garbage) is lost: its in-flight tasks go back to pending
   and the link restarts it with backoff. Only when no node can start do futures fail with
   :class:`BrokenCeranubisExecutor`.

The kernel thread never blocks on the loop except where the caller asked to wait.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import protocol as p
from .errors import (
    BrokenCeranubisExecutor,
    CeranubisError,
    HostError,
    NodeLost,
    NoHostsAvailable,
    ProtocolError,
    RemoteTraceback,
    TaskError,
    TaskTimeout,
    UnpicklableError,
    VersionMismatch,
    WorkerCrashed,
    crash_advice,
    describe_exit,
)
from .serialize import RemoteException, loads
from .transport import Channel, Transport

log = logging.getLogger("ceranubis")
T = TypeVar("T")

# Tasks in flight per worker of a node: enough to hide a network round trip behind work,
# few enough that a slow host does not hoard the tail of a sweep.
CREDIT_PER_WORKER = 16
# Seconds to start a node and get its Hello before the host counts as failed.
START_TIMEOUT = 30.0
# Seconds between our heartbeats to a node.
HEARTBEAT_INTERVAL = 1.0
# Seconds of silence after which a node is declared lost (and a node gives up on us).
SILENCE_TIMEOUT = 10.0
# Restart attempts for a node that keeps dying, and the first backoff delay (doubling).
MAX_RESTARTS = 5
RESTART_BACKOFF = 0.2
# Default times a task is re-run after its worker or node died under it.
DEFAULT_RETRIES = 2


@dataclass
class TaskRecord:
    """A task as the client tracks it, from submit to result."""

    task_id: int
    future: Future[Any]
    fn_id: int
    kind: int
    codec: int
    payload: bytes
    buffers: tuple[p.Buffer, ...] = ()
    priority: int = 0
    timeout: float = 0.0
    retries: int = DEFAULT_RETRIES
    group: str | None = None
    attempts: int = 0
    host: str | None = None
    started: float = 0.0
    finished: float = 0.0
    output: str = ""

    def __lt__(self, other: TaskRecord) -> bool:
        return self.task_id < other.task_id

    def as_task(self) -> p.Task:
        return p.Task(
            self.task_id,
            self.fn_id,
            self.kind,
            self.codec,
            self.payload,
            self.buffers,
            self.timeout,
        )


TaskListener = Callable[[TaskRecord], None]


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str = "ceranubis-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call_threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def run_threadsafe(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run a coroutine on the loop; returns a concurrent future for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Stop the loop and join its thread (from any thread but the loop's)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()


@dataclass
class HostInfo:
    """What the client knows about one connected node (for ``%ceranubis hosts``, widget)."""

    host: str
    state: str = "starting"
    workers: int = 0
    python: str = ""
    hostname: str = ""
    pid: int = 0
    busy: int = 0
    loadavg: float = 0.0
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    done: int = 0
    error: str = ""


class NodeLink:
    """The client end of one node: handshake, reading, writing, credit, restarts."""

    def __init__(self, scheduler: Scheduler, transport: Transport) -> None:
        self.scheduler = scheduler
        self.transport = transport
        self.host = transport.host
        self.info = HostInfo(self.host)
        self.channel: Channel | None = None
        self.conn = p.Connection(p.CLIENT)
        self.capacity = 0
        self.inflight: dict[int, TaskRecord] = {}
        self.sent_functions: set[int] = set()
        self.last_heard = 0.0
        self.last_sent = 0.0
        self.ready = False
        self.ever_ready = False
        self.dead = False
        self.closing = False
        self.task: asyncio.Task[None] | None = None

    @property
    def free(self) -> int:
        """Tasks this node can take now."""
        return self.capacity - len(self.inflight) if self.ready else 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Keep a node running on this host until closed; restart it when it dies."""
        failures = 0
        while not self.closing:
            try:
                await self._session()
                failures = 0
            except HostError as error:
                if self.closing:
                    break
                failures += 1
                self._record_failure(error, failures)
                if not (self.ever_ready and error.transient) or failures > MAX_RESTARTS:
                    self.dead = True
                    self.scheduler.on_link_dead(self)
                    return
                await asyncio.sleep(RESTART_BACKOFF * 2 ** (failures - 1))

        self.info.state = "closed"

    def _record_failure(self, error: HostError, failures: int) -> None:
        self.info.state = "failed"
        self.info.error = str(error)
        self.scheduler.on_node_failed(self, error)
        log.warning("[host=%s] %s (attempt %d)", self.host, error, failures)

    async def _session(self) -> None:
        self.conn = p.Connection(p.CLIENT)
        self.sent_functions = set()
        self.channel = await self._start_channel()
        try:
            if self.closing:
                return
            await self._handshake()
            await self._serve()
        finally:
            self._lost_inflight()
            await self._close_channel()

    async def _start_channel(self) -> Channel:
        try:
            return await asyncio.wait_for(self.transport.start(), START_TIMEOUT)
        except asyncio.TimeoutError:
            raise NodeLost(self.host, f"node did not start within {START_TIMEOUT:.0f} s") from None
        except HostError:
            raise
        except Exception as error:  # OSError from exec, asyncssh errors not mapped yet
            raise NodeLost(self.host, f"could not start a node: {error}") from error

    async def _handshake(self) -> None:
        hello = await asyncio.wait_for(self._first_message(), START_TIMEOUT)
        self._check_hello(hello)
        workers = self.transport.workers or hello.cores
        self._send(p.Configure(p.PROTOCOL_VERSION, workers, HEARTBEAT_INTERVAL, SILENCE_TIMEOUT))
        self.info = HostInfo(
            self.host,
            "ready",
            workers,
            hello.python,
            hello.hostname,
            hello.pid,
            done=self.info.done,
        )
        self.capacity = workers * CREDIT_PER_WORKER
        self.ready = True
        self.ever_ready = True
        self.scheduler.on_node_ready(self)

    async def _first_message(self) -> p.Hello:
        while True:
            message = await self._next_message()
            if isinstance(message, p.Hello):
                return message
            if isinstance(message, p.NodeFailure):
                raise NodeLost(self.host, f"node failed to start: {message.message}")

    def _check_hello(self, hello: p.Hello) -> None:
        ours = f"{sys.version_info.major}.{sys.version_info.minor}"
        theirs = ".".join(hello.python.split(".")[:2])
        if theirs != ours:
            raise VersionMismatchOnHost(
                self.host,
                f"remote Python is {hello.python} but the client runs {ours}; functions "
                "travel by value and need the same major.minor: point Host(..., python=...) "
                f"at a python{ours}",
            )

    async def _next_message(self) -> p.Message:
        """Read until a whole message arrives; EOF and garbage become :class:`NodeLost`."""
        while True:
            try:
                message = self.conn.next_event()
            except ProtocolError as error:
                raise self._garbage(error) from error
            if message is not None:
                return message
            if self.channel is None:
                raise NodeLost(self.host, "node channel closed")
            data = await self.channel.read()
            self.last_heard = time.monotonic()
            if not data:
                raise NodeLost(self.host, self._eof_reason())
            self.conn.receive_data(data)

    def _garbage(self, error: ProtocolError) -> HostError:
        if isinstance(error, VersionMismatch):
            return VersionMismatchOnHost(self.host, str(error))
        log.error("[host=%s] %s: dropping the node", self.host, error)
        return NodeLost(self.host, f"sent a malformed frame ({error}); node dropped")

    def _eof_reason(self) -> str:
        tail = self.channel.stderr_tail() if self.channel else ""
        detail = f"; its last words: {tail[-500:]}" if tail else ""
        return f"node connection closed{detail}"

    async def _serve(self) -> None:
        heartbeat = asyncio.ensure_future(self._heartbeat())
        try:
            while True:
                message = await self._next_message()
                self._on_message(message)
        finally:
            heartbeat.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            now = time.monotonic()
            if now - self.last_heard > SILENCE_TIMEOUT:
                log.warning(
                    "[host=%s] silent for %.0f s: declaring it lost",
                    self.host,
                    now - self.last_heard,
                )
                if self.channel is not None:
                    await self.channel.close()
                return
            if now - self.last_sent >= HEARTBEAT_INTERVAL:
                self._send(p.Heartbeat())

    def _on_message(self, message: p.Message) -> None:
        if isinstance(message, p.Results):
            self.scheduler.on_results(self, message.results)
        elif isinstance(message, p.Load):
            self._on_load(message)
        elif isinstance(message, p.NodeFailure):
            raise NodeLost(self.host, f"node gave up: {message.message}")

    def _on_load(self, load: p.Load) -> None:
        self.info.busy = load.busy
        self.info.loadavg = load.loadavg
        self.info.cpu_percent = load.cpu_percent
        self.info.memory_percent = load.memory_percent

    def _lost_inflight(self) -> None:
        self.ready = False
        lost = list(self.inflight.values())
        self.inflight.clear()
        if lost:
            self.scheduler.requeue_lost(self, lost)

    async def _close_channel(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        """Ask the node to shut down, close its channel and wait for the link to end.

        The link task is not cancelled mid-start (that could orphan a node being
        started); it sees ``closing`` and ends by itself, within ``START_TIMEOUT``.
        """
        self.closing = True
        if self.channel is not None and self.ready:
            self._send(p.Shutdown())
        await self._close_channel()
        if self.task is not None:
            done, _ = await asyncio.wait([self.task], timeout=START_TIMEOUT + 5)
            if not done:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)

    # ------------------------------------------------------------------ sending

    def _send(self, message: p.Message) -> None:
        if self.channel is not None:
            self.channel.write(self.conn.send(message))
            self.last_sent = time.monotonic()

    def send_tasks(self, records: list[TaskRecord], functions: dict[int, bytes]) -> None:
        """Send a batch of tasks, preceded by any function this node has not seen."""
        now = time.monotonic()
        for record in records:
            if record.fn_id not in self.sent_functions:
                self._send(p.Function(record.fn_id, functions[record.fn_id]))
                self.sent_functions.add(record.fn_id)
            record.host = self.host
            record.started = now
            self.inflight[record.task_id] = record
        self._send(p.Tasks(tuple(record.as_task() for record in records)))

    def send_cancel(self, task_ids: Sequence[int]) -> None:
        """Ask the node to stop these tasks."""
        if self.ready:
            self._send(p.Cancel(tuple(task_ids)))


class VersionMismatchOnHost(HostError):
    """A host's Python or protocol version cannot work with ours."""

    transient = False


@dataclass(order=True)
class _Pending:
    sort_key: tuple[int, int]
    record: TaskRecord = field(compare=False)


class Scheduler:
    """Owns the loop thread, the pending queue and the node links."""

    def __init__(self, transports: Sequence[Transport]) -> None:
        if not transports:
            raise CeranubisError("a scheduler needs at least one transport")
        self.loop_thread = LoopThread()
        self.transports = list(transports)
        self.links: list[NodeLink] = []
        self.pending: list[_Pending] = []
        self.incoming: collections.deque[TaskRecord] = collections.deque()
        self.functions: dict[int, bytes] = {}
        self.listeners: list[TaskListener] = []
        self.outstanding = 0
        self.broken: BaseException | None = None
        self.host_errors: dict[str, HostError] = {}
        self._wakeup_pending = False
        self._ids = itertools.count(1)
        self._idle = threading.Condition()
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
        if self.broken is not None:
            raise BrokenCeranubisExecutor(str(self.broken)) from self.broken
        with self._idle:
            self.outstanding += 1
        self.incoming.append(record)
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

    def hosts_threadsafe(self) -> list[HostInfo]:
        """A snapshot of every host's state."""
        return [link.info for link in self.links]

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
            link = NodeLink(self, transport)
            self.links.append(link)
            link.task = asyncio.ensure_future(link.run())
            link.task.add_done_callback(_report_crash)

    def _take_incoming(self) -> None:
        self._wakeup_pending = False
        incoming = self.incoming
        while incoming:
            record = incoming.popleft()
            heapq.heappush(self.pending, _Pending((-record.priority, record.task_id), record))
        self._dispatch()

    def _dispatch(self) -> None:
        """Give pending tasks to nodes with free credit, one frame per node."""
        if not self.pending:
            return
        for link in sorted(self.links, key=lambda link: -link.free):
            free = link.free
            if free <= 0 or not self.pending:
                continue
            batch = self._take_for(link, free)
            if batch:
                link.send_tasks(batch, self.functions)

    def _take_for(self, link: NodeLink, count: int) -> list[TaskRecord]:
        batch: list[TaskRecord] = []
        skipped: list[_Pending] = []
        while self.pending and len(batch) < count:
            entry = heapq.heappop(self.pending)
            record = entry.record
            if record.group is not None and link.transport.group != record.group:
                skipped.append(entry)
                continue
            if record.attempts == 0 and not record.future.set_running_or_notify_cancel():
                self._finished(record)
                continue
            batch.append(record)
        for entry in skipped:
            heapq.heappush(self.pending, entry)
        return batch

    def on_node_ready(self, link: NodeLink) -> None:
        """A node finished its handshake: give it work."""
        self.host_errors.pop(link.host, None)
        self._dispatch()

    def on_node_failed(self, link: NodeLink, error: HostError) -> None:
        """A node could not start or was lost."""
        self.host_errors[link.host] = error

    def on_link_dead(self, link: NodeLink) -> None:
        """A host was given up on; once every host is, the executor is broken."""
        if all(other.dead for other in self.links):
            self._break(NoHostsAvailable(list(self.host_errors.values())))

    def _break(self, error: BaseException) -> None:
        self.broken = error
        broken = BrokenCeranubisExecutor(f"no host is usable: {error}")
        broken.__cause__ = error
        while self.pending:
            record = heapq.heappop(self.pending).record
            self._fail(record, broken)
        while self.incoming:
            self._fail(self.incoming.popleft(), broken)

    def on_results(self, link: NodeLink, results: tuple[p.Result, ...]) -> None:
        """Resolve futures for a batch of results, then refill the node."""
        for result in results:
            record = link.inflight.pop(result.task_id, None)
            if record is not None:
                record.output = result.output
                self._resolve(link, record, result)
        self._dispatch()

    def _resolve(self, link: NodeLink, record: TaskRecord, result: p.Result) -> None:
        status = result.status
        if status == p.OK:
            self._succeed(link, record, result)
        elif status == p.RAISED:
            self._fail(record, _user_exception(link.host, record, result))
        elif status == p.CRASHED:
            self._crashed(link, record, result)
        elif status == p.UNPICKLABLE:
            text = bytes(result.payload).decode("utf-8", "replace")
            self._fail(
                record,
                UnpicklableError(
                    f"task {record.task_id} on {link.host}: {text}",
                    host=link.host,
                    task_id=record.task_id,
                ),
            )
        elif status == p.TIMED_OUT:
            self._fail(
                record,
                TaskTimeout(
                    f"task {record.task_id} on {link.host} ran longer than its timeout of "
                    f"{record.timeout:g} s; its worker was killed and replaced",
                    host=link.host,
                    task_id=record.task_id,
                ),
            )
        else:
            self._fail(record, CancelledError(f"task {record.task_id} was cancelled"))

    def _succeed(self, link: NodeLink, record: TaskRecord, result: p.Result) -> None:
        try:
            value = loads(result.codec, result.payload, result.buffers)
        except Exception as error:
            self._fail(
                record,
                UnpicklableError(
                    f"the result of task {record.task_id} from {link.host} could not be unpickled "
                    f"here: {type(error).__name__}: {error}",
                    host=link.host,
                    task_id=record.task_id,
                ),
            )
            return
        link.info.done += 1
        self._finished(record)
        if not record.future.done():
            record.future.set_result(value)

    def _crashed(self, link: NodeLink, record: TaskRecord, result: p.Result) -> None:
        info = json.loads(bytes(result.payload))
        exitcode = int(info.get("exitcode", 0))
        record.attempts += 1
        how = describe_exit(exitcode)
        if record.attempts <= record.retries:
            log.warning(
                "[host=%s task=%d] worker died (%s); retrying", link.host, record.task_id, how
            )
            self._requeue(record)
            return
        message = (
            f"worker {info.get('pid', '?')} on {link.host} died with {how} while running "
            f"task {record.task_id} ({record.attempts} attempts); {crash_advice(exitcode)}"
        )
        self._fail(
            record,
            WorkerCrashed(message, host=link.host, task_id=record.task_id, exitcode=exitcode),
        )

    def requeue_lost(self, link: NodeLink, records: list[TaskRecord]) -> None:
        """A node went away: its in-flight tasks go back to pending (within their retries)."""
        log.warning("[host=%s] node lost; %d tasks re-queued", link.host, len(records))
        for record in records:
            record.attempts += 1
            if record.attempts <= record.retries + 1:
                self._requeue(record)
            else:
                self._fail(
                    record,
                    NodeLost(
                        link.host,
                        f"task {record.task_id} was lost with its node "
                        f"{record.attempts} times; giving up",
                    ),
                )
        self._dispatch()

    def _requeue(self, record: TaskRecord) -> None:
        record.host = None
        heapq.heappush(self.pending, _Pending((-record.priority, record.task_id), record))

    def _fail(self, record: TaskRecord, error: BaseException) -> None:
        self._finished(record)
        if not record.future.done():
            record.future.set_exception(error)

    def _finished(self, record: TaskRecord) -> None:
        record.finished = time.monotonic()
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:  # a broken listener must not stop the scheduler
                log.exception("task listener failed")
        with self._idle:
            self.outstanding -= 1
            if self.outstanding == 0:
                self._idle.notify_all()

    async def _cancel_all(self, stop_running: bool) -> None:
        self._take_incoming()
        kept: list[_Pending] = []
        for entry in self.pending:
            if entry.record.attempts == 0 and entry.record.future.cancel():
                self._finished(entry.record)
            else:
                kept.append(entry)
        self.pending = kept
        heapq.heapify(self.pending)
        if stop_running:
            for link in self.links:
                if link.inflight:
                    link.send_cancel(list(link.inflight))

    async def _cancel_ids(self, task_ids: set[int]) -> None:
        self._take_incoming()
        kept = []
        for entry in self.pending:
            if entry.record.task_id in task_ids:
                future = entry.record.future
                if not future.cancel() and not future.done():
                    future.set_exception(
                        CancelledError(f"task {entry.record.task_id} was cancelled")
                    )
                self._finished(entry.record)
            else:
                kept.append(entry)
        self.pending = kept
        heapq.heapify(self.pending)
        for link in self.links:
            running = [task_id for task_id in link.inflight if task_id in task_ids]
            if running:
                link.send_cancel(running)

    async def _close(self) -> None:
        outcomes = await asyncio.gather(
            *(link.close() for link in self.links), return_exceptions=True
        )
        for link, outcome in zip(self.links, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("[host=%s] closing the node failed: %r", link.host, outcome)
        self._break(BrokenCeranubisExecutor("the executor was shut down"))


def _report_crash(task: asyncio.Task[None]) -> None:
    """A link task must never die silently of a bug."""
    if not task.cancelled() and task.exception() is not None:
        log.error("node link crashed (a bug in ceranubis)", exc_info=task.exception())


def _user_exception(host: str, record: TaskRecord, result: p.Result) -> BaseException:
    """The exception the user's function raised, with the remote traceback as its cause."""
    try:
        remote: RemoteException = loads(result.codec, result.payload)
    except Exception as error:
        return TaskError(
            f"task {record.task_id} on {host} raised an exception that could not be "
            f"unpickled here: {type(error).__name__}: {error}",
            host=host,
            task_id=record.task_id,
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


__all__ = ["HostInfo", "LoopThread", "NodeLink", "Scheduler", "TaskRecord"]
