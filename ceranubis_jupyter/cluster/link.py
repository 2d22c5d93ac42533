"""The client end of one node: start, handshake, read, write, heartbeats, restarts.

A :class:`NodeLink` keeps a node running on its host for as long as the executor lives:

- it starts the node through its transport and checks the ``Hello`` (protocol and Python
  versions), then reads frames and hands results to the scheduler;
- it sends a heartbeat when it has sent nothing for ``HEARTBEAT_INTERVAL`` and declares the
  node lost after ``silence_timeout`` of silence (a partition sends no FIN);
- a lost node's in-flight tasks go back to the scheduler; the link then restarts the node
  with capped exponential backoff for up to ``REJOIN_WINDOW`` seconds, so a host that comes
  back rejoins. A host that never came up, or refused us for good (host key, auth, Python),
  is given up at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import HostError, HostVersionMismatch, NodeLost, ProtocolError
from ..wire import protocol as p
from . import credit
from .credit import MIN_CREDIT_PER_WORKER, QUEUED_SECONDS
from .fastpaths import FastPaths
from .filesync import FileRegistry, LinkFiles
from .modules import CodeRegistry, LinkCode
from .outcomes import node_broke
from .tasks import PendingQueue, TaskRecord
from .transport import Channel, Transport

log = logging.getLogger("ceranubis")

# Weight of the newest observation in the per-node task-time average.
SERVICE_SMOOTHING = 0.2
# Seconds to start a node and get its Hello before the host counts as failed.
START_TIMEOUT = 30.0
# Seconds between our heartbeats to a node (the node sends its load as often).
HEARTBEAT_INTERVAL = 1.0
# At least this many heartbeats per silence timeout: a short timeout shortens the interval
# (both ways), so a healthy but idle node is never taken for a lost one.
HEARTBEATS_PER_TIMEOUT = 4
# Default seconds of silence after which a node is declared lost (and a node gives up on
# us): shorter finds partitions sooner, longer survives a busy network.
SILENCE_TIMEOUT = 10.0
# Seconds past a deadline at which the heartbeat task looks again (timer jitter).
SILENCE_CHECK_SLACK = 0.01
# First restart delay after a node is lost (doubling), and its cap.
RESTART_BACKOFF = 0.2
RESTART_BACKOFF_MAX = 5.0
# How long a host that was up keeps being retried after it is lost.
REJOIN_WINDOW = 600.0


class LinkOwner(Protocol):
    """What a :class:`NodeLink` reports to (the scheduler), all on the loop thread."""

    silence_timeout: float
    fast_paths: FastPaths
    max_data_frame: int
    code: CodeRegistry
    files: FileRegistry
    links: list[NodeLink]
    pending: PendingQueue  # the tasks waiting client-side

    def on_node_ready(self, link: NodeLink) -> None:
        """The node said hello and is configured: it can take tasks."""

    def on_node_failed(self, link: NodeLink, error: HostError) -> None:
        """The node could not be started; ``error`` says why."""

    def on_link_dead(self, link: NodeLink) -> None:
        """The link gave up on its node for good."""

    def on_results(self, link: NodeLink, results: tuple[p.Result, ...]) -> None:
        """Results arrived from the node."""

    def requeue_lost(
        self, link: NodeLink, records: list[TaskRecord], *, possibly_running: int = 0
    ) -> None:
        """The node was lost: its in-flight tasks go back to the queue."""


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
    sync: str = ""  # a data sync under way or failed: files and bytes (filesync.py)


class NodeLink:
    """The client end of one node: handshake, reading, writing, credit, restarts."""

    def __init__(self, scheduler: LinkOwner, transport: Transport) -> None:
        self.scheduler = scheduler
        self.transport = transport
        self.host = transport.host
        self.info = HostInfo(self.host)
        self.channel: Channel | None = None
        self.conn = p.Connection(p.CLIENT)
        self.capacity = 0
        self.inflight: dict[int, TaskRecord] = {}
        self.sent_functions: set[int] = set()
        self.code = LinkCode()  # the user's code packs offered to this node
        self.files = LinkFiles(self)  # data files sent to this node (filesync.py)
        self.last_heard = 0.0
        self.last_sent = 0.0
        self.ready = False
        self.ever_ready = False
        self.dead = False
        self.closing = False
        self.draining = False
        self.lost_at = 0.0
        self.last_result_at = 0.0
        self.service_time = QUEUED_SECONDS
        self.task: asyncio.Task[None] | None = None

    @property
    def free(self) -> int:
        """Tasks this node can take now."""
        if not self.ready or self.draining:
            return 0
        return self.capacity - len(self.inflight)

    @property
    def direct_writes(self) -> bool:
        """Whether another thread may send to this node while the loop sleeps."""
        return not self.ready or (self.channel is not None and self.channel.direct_writes)

    @property
    def batch_floor(self) -> int:
        """Free credit worth a frame while more tasks wait: a quarter of the credit, so
        tiny tasks travel in batches instead of a frame per returned result."""
        return max(1, self.capacity // 4)

    @property
    def load(self) -> float:
        """Tasks in flight per worker."""
        return self.load_with(0)

    def load_with(self, extra: int) -> float:
        """Tasks in flight per worker if ``extra`` more were sent."""
        return (len(self.inflight) + extra) / max(1, self.info.workers)

    def note_results(self, count: int) -> None:
        """Size credit from how fast results come back while the node is saturated."""
        now = time.monotonic()
        workers = max(1, self.info.workers)
        if self.last_result_at and len(self.inflight) >= workers and count:
            per_task = (now - self.last_result_at) * workers / count
            self.service_time += SERVICE_SMOOTHING * (per_task - self.service_time)
            self.capacity = workers * credit.per_worker(self.service_time, self._waiting())
        self.last_result_at = now

    def _waiting(self) -> float:
        """Tasks waiting client-side per worker of the ready nodes (credit.per_worker)."""
        waiting = len(self.scheduler.pending)
        if not waiting:
            return 0.0  # the common case for a lone submit: skip the sum
        return waiting / max(1, sum(n.info.workers for n in self.scheduler.links if n.ready))

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats, each way: often enough for the silence timeout."""
        return min(HEARTBEAT_INTERVAL, self.scheduler.silence_timeout / HEARTBEATS_PER_TIMEOUT)

    def update_busy(self) -> None:
        """Workers busy as the client sees it (tasks in flight, at most one per worker)."""
        self.info.busy = min(self.info.workers, len(self.inflight))

    @property
    def group(self) -> str | None:
        """The host's group label (tasks with a group run only on hosts of that group)."""
        return self.transport.group

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Run the link as a task of the running loop (:meth:`run`)."""
        self.task = asyncio.ensure_future(self.run())
        self.task.add_done_callback(_report_crash)

    async def run(self) -> None:
        """Keep a node running on this host until closed; restart it when it dies."""
        failures = 0
        while not self.closing:
            try:
                await self._session()
                failures = 0
            except Exception as raised:  # HostError, or what a node's messages broke
                if self.closing:
                    break
                failures += 1
                error = raised if isinstance(raised, HostError) else node_broke(self.host, raised)
                self._record_failure(error, failures)
                if not self._worth_retrying(error):
                    self.dead = True
                    self.scheduler.on_link_dead(self)
                    return
                delay = RESTART_BACKOFF * 2 ** (failures - 1)
                await asyncio.sleep(min(delay, RESTART_BACKOFF_MAX))
        self.info.state = "closed"

    def _worth_retrying(self, error: HostError) -> bool:
        if not (self.ever_ready and error.transient):
            return False
        if not self.lost_at:
            self.lost_at = time.monotonic()
        return time.monotonic() - self.lost_at < REJOIN_WINDOW

    def _record_failure(self, error: HostError, failures: int) -> None:
        self.info.state = "failed"
        self.info.error = str(error)
        self.scheduler.on_node_failed(self, error)
        log.warning("[host=%s] %s (attempt %d)", self.host, error, failures)

    async def _session(self) -> None:
        self.conn = p.Connection(p.CLIENT, self.scheduler.max_data_frame)
        self.went_silent = False
        self.files.close()
        self.sent_functions, self.code, self.files = set(), LinkCode(), LinkFiles(self)
        self.channel = await self._start_channel()
        try:
            if self.closing:
                return
            await self._handshake()
            await self._serve()
        finally:
            self._lost_inflight()
            await self._close_channel(abort=self.went_silent)

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
        # Configure goes out before the Hello comes in: the node reads it only after
        # sending its Hello, and starts its workers while we check that Hello. This saves
        # a round trip (a network one to a remote host). Workers 0: one per core there.
        silence = self.scheduler.silence_timeout
        interval = self.heartbeat_interval
        asked = self.transport.workers or 0
        fast, cap = self.scheduler.fast_paths, self.scheduler.max_data_frame
        paths = (fast.direct_writes, fast.cut_through, cap, fast.lent_input)
        self.send(p.Configure(p.PROTOCOL_VERSION, asked, interval, silence, *paths))
        hello = await asyncio.wait_for(self._first_message(), START_TIMEOUT)
        self._check_hello(hello)
        workers = asked or hello.cores
        self.info = HostInfo(
            self.host,
            "ready",
            workers,
            hello.python,
            hello.hostname,
            hello.pid,
            done=self.info.done,
        )
        self.capacity = workers * MIN_CREDIT_PER_WORKER
        self.last_result_at = 0.0
        self.ready = True
        self.ever_ready = True
        self.lost_at = 0.0
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
            raise HostVersionMismatch(
                self.host,
                f"remote Python is {hello.python} but the client runs {ours}; functions "
                "travel by value and need the same major.minor: point Host(..., python=...) "
                f"at a python{ours}",
            )

    async def _next_message(self) -> p.Message:
        """Read until a whole message arrives; EOF and garbage become :class:`NodeLost`."""
        while True:
            message = self._decoded()
            if message is not None:
                return message
            if self.channel is None:
                raise NodeLost(self.host, "node channel closed")
            data = await self.channel.read()
            self.last_heard = time.monotonic()
            if not data:
                raise NodeLost(self.host, self._eof_reason())
            self.conn.receive_data(data)

    def _eof_reason(self) -> str:
        tail = self.channel.stderr_tail() if self.channel else ""
        detail = f"; its last words: {tail[-500:]}" if tail else ""
        return f"node connection closed{detail}"

    async def _serve(self) -> None:
        """Read messages until the node is lost: EOF, garbage, or silence (the heartbeat)."""
        reader = self._receive_pushed()
        heartbeat = asyncio.ensure_future(self._heartbeat())
        try:
            done, _ = await asyncio.wait([reader, heartbeat], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (reader, heartbeat):
                task.cancel()
            await asyncio.gather(reader, heartbeat, return_exceptions=True)

    def _receive_pushed(self) -> asyncio.Future[None]:
        """Handle the node's bytes in the loop callback that reads them (no task switch
        per read); the future fails when the node is lost."""
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def receive(data: bytes) -> None:
            if lost.done():
                return
            try:
                self._on_bytes(data)
            except BaseException as error:  # NodeLost, or a bug: _serve raises it
                lost.set_exception(error)

        if self.channel is None:  # closed during the handshake
            raise NodeLost(self.host, "node channel closed")
        self.channel.set_receiver(receive)
        try:
            self._handle_buffered()  # what came with the Hello
        except BaseException as error:
            lost.set_exception(error)
        return lost

    def _on_bytes(self, data: bytes) -> None:
        """Feed pushed bytes (``b""``: end of stream) and handle every whole message."""
        self.last_heard = time.monotonic()
        if not data:
            raise NodeLost(self.host, self._eof_reason())
        self.conn.receive_data(data)
        self._handle_buffered()

    def _handle_buffered(self) -> None:
        while (message := self._decoded()) is not None:
            self._on_message(message)

    def _decoded(self) -> p.Message | None:
        """The next whole message received, if any; garbage becomes :class:`NodeLost`."""
        try:
            return self.conn.next_event()
        except ProtocolError as error:
            raise node_broke(self.host, error) from error

    async def _heartbeat(self) -> None:
        """Send a heartbeat when we have been quiet; raise :class:`NodeLost` once the node
        has been silent for the timeout (a partition sends no FIN: this is how we know)."""
        silence, interval = self.scheduler.silence_timeout, self.heartbeat_interval
        while True:
            now = time.monotonic()
            quiet = now - self.last_heard
            if quiet > silence:
                log.warning("[host=%s] silent for %.1f s: declaring it lost", self.host, quiet)
                self.went_silent = True
                raise NodeLost(
                    self.host,
                    f"silent for {quiet:.1f} s (heartbeat timeout {silence:g} s); the network "
                    "or the host is down",
                )
            if now - self.last_sent >= interval:
                self.send(p.Heartbeat())
            wake = min(self.last_sent + interval, self.last_heard + silence)
            await asyncio.sleep(max(0.0, wake - time.monotonic()) + SILENCE_CHECK_SLACK)

    def _on_message(self, message: p.Message) -> None:
        if isinstance(message, p.Results):
            self.scheduler.on_results(self, message.results)
        elif isinstance(message, p.Load):
            self._on_load(message)
        elif isinstance(message, p.NodeFailure):
            raise NodeLost(self.host, f"node gave up: {message.message}")
        elif isinstance(message, p.FileSync):
            self.files.on_message(message, self.scheduler.files)
        elif isinstance(message, p.CodeNeed):
            self.send(self.code.answer(message, self.scheduler.code, self.host))

    def _on_load(self, load: p.Load) -> None:
        self.info.loadavg = load.loadavg
        self.info.cpu_percent = load.cpu_percent
        self.info.memory_percent = load.memory_percent

    def _lost_inflight(self) -> None:
        self.ready = False
        lost = list(self.inflight.values())
        self.inflight.clear()
        self.update_busy()
        if lost:
            # Only the oldest task per worker can have been running; the rest never started
            # and must not use up their retries (a flapping host would burn them all).
            running = self.info.workers if not self.closing else 0
            self.scheduler.requeue_lost(self, lost, possibly_running=running)

    async def _close_channel(self, abort: bool = False) -> None:
        """Close the channel; ``abort`` drops it at once (a silent node will not answer)."""
        channel, self.channel = self.channel, None
        if channel is not None:
            await (channel.abort() if abort else channel.close())

    def put_back(self, record: TaskRecord) -> None:
        """Return a task whose result broke us to :attr:`inflight`, first (it ran)."""
        self.inflight = {record.task_id: record, **self.inflight}

    async def close(self) -> None:
        """Ask the node to shut down, close its channel and wait for the link to end.

        A node still starting (no channel yet) is cancelled: both transports clean up a
        cancelled start (asyncio kills a half-made subprocess; ssh closes the connection,
        and a node whose input closes exits), so a hanging host never delays shutdown.
        """
        self.closing = True
        starting = self.channel is None
        if self.channel is not None and self.ready:
            self.send(p.Shutdown())
        await self._close_channel()
        if self.task is None:
            return
        if starting:
            self.task.cancel()
        done, _ = await asyncio.wait([self.task], timeout=START_TIMEOUT + 5)
        if not done:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    # ------------------------------------------------------------------ sending

    def send(self, message: p.Message) -> None:
        """Send one message to the node (dropped when it has no channel)."""
        if self.channel is not None:
            self.channel.write(self.conn.send(message))
            self.last_sent = time.monotonic()

    def send_tasks(self, records: list[TaskRecord], functions: dict[int, bytes]) -> None:
        """Send a batch of tasks, preceded by any function this node has not seen."""
        now = time.monotonic()
        self.files.offer_if_new(self.scheduler.files)  # the data and code tasks need first
        for offer in self.code.offers(self.scheduler.code):
            self.send(offer)
        for record in records:
            if record.fn_id not in self.sent_functions:
                self.send(p.Function(record.fn_id, functions[record.fn_id]))
                self.sent_functions.add(record.fn_id)
            record.host = self.host
            record.started = now
            self.inflight[record.task_id] = record
        self.update_busy()
        self.send(p.Tasks(tuple(record.as_task() for record in records)))

    def send_cancel(self, task_ids: Sequence[int]) -> None:
        """Ask the node to stop these tasks."""
        if self.ready:
            self.send(p.Cancel(tuple(task_ids)))


def _report_crash(task: asyncio.Task[None]) -> None:
    """A link task must never die silently of a bug."""
    if not task.cancelled() and task.exception() is not None:
        log.error("node link crashed (a bug in ceranubis)", exc_info=task.exception())
