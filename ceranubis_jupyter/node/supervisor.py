"""The node supervisor: the program the client starts on each host.

::

    client ──frames on stdin──►  Supervisor  ──Function/Tasks──► worker 1 (forked)
    client ◄─frames on stdout──  (selectors)  ◄────Results────── worker 2 ...

It says ``Hello``, waits for ``Configure``, forks one worker per core (or as asked), queues
the tasks the client sent and feeds each worker a batch of about ``BATCH_SECONDS`` of work
(:mod:`.pace`), batches the results of a loop turn into one frame, passes a big task to an
idle worker while its frame still arrives (:class:`~.relay.Relay`), lends its input to an
idle worker when it has nothing to do (:mod:`.lending`), restarts a worker that dies
(reporting the task it ran, which its :class:`~.slot.RunningSlot` tells, as crashed) and
reports load every second. It exits, killing its workers, when its input closes, on
``Shutdown``, or when the client has been silent too long. The workers' processes are
:mod:`~.pool`'s business, the facts about the host :mod:`~.hostinfo`'s.

Stdlib + dill only: the client ships the node's modules to bare hosts (see ``bootstrap``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import selectors
import signal
import time
from collections.abc import Sequence

from ..errors import RemoteProtocolError
from ..wire import protocol as p
from . import hostinfo, pool, worker
from .code import CodeCache, CodeError
from .files import FileStore
from .lending import INPUT_LOST, Lender
from .outbox import Outbox, grow_pipe
from .pace import Pace
from .pool import WorkerState
from .relay import Relay

# Seconds between load reports (which double as heartbeats to the client), at most: the
# client's Configure may ask for a shorter interval (a short heartbeat timeout).
LOAD_INTERVAL = 1.0
# Seconds between looks at the workers while tasks wait in the node's queue: a direct
# delivery the node was not told of (its wish for news and a worker's check can cross)
# then costs at most this delay.
NEWS_POLL_SECONDS = 0.02
# Seconds before the node tries again to write to the client while a worker holds the
# output lock (a worker holds it for one small write: a few microseconds).
LOCK_RETRY_SECONDS = 0.0005


class Supervisor:
    """Runs the node: one instance per node process."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.conn = p.Connection(p.NODE)
        self.read_fd = read_fd
        self.client = worker.ClientPipe.open(write_fd)
        self.out = Outbox(write_fd, self.client)
        self.selector = selectors.DefaultSelector()
        self.workers: dict[int, WorkerState] = {}
        self.queue: collections.deque[p.Task] = collections.deque()
        self.functions: dict[int, p.Buffer] = {}
        self.pending_results: list[p.Result] = []
        self.relay = Relay(self.conn, self._relay_target)
        self.lender = Lender(self.selector, read_fd)
        self.pace = Pace()
        self.n_workers = 0
        self.silence_timeout = 60.0
        self.direct_writes = self.cut_through = True  # until Configure says otherwise
        self.load_interval = LOAD_INTERVAL
        self.last_heard = time.monotonic()
        self.next_load = 0.0
        self.cpu = hostinfo.CpuMeter()
        self.running = True
        self.code = CodeCache(self._send, self._tell_workers)
        self.files = FileStore(self._send, self._tell_workers)

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        """Serve the client until it goes away; then end every worker."""
        os.set_blocking(self.out.fd, False)
        self.selector.register(self.read_fd, selectors.EVENT_READ, None)
        self._send(hostinfo.hello())
        try:
            while self.running:
                self._turn()
        finally:
            self._stop_workers()
            self.out.flush()  # the workers are gone: the output lock is free

    def _turn(self) -> None:
        self._watch_out_fd()
        for key, _ in self.selector.select(self._select_timeout()):
            if key.data is None:
                self._read_client()
            elif isinstance(key.data, Outbox):
                key.data.flush()  # a forgotten worker's outbox is empty: no-op
            elif (state := self.workers.get(key.fd)) is key.data and state is not None:
                self._read_worker(state)
            # else: the worker died earlier in this turn and its fd may be reused already
            if not self.running:
                return
        if self.out.broken:
            self.running = False  # nobody reads what we say
            return
        self._dispatch()
        self._flush_results()
        if self.files.fetching:
            self.files.pump(lambda: not self.out)  # a file going back, as the pipe takes it
        self._on_clock()
        self._lend_if_idle()

    def _lend_if_idle(self) -> None:
        """Lend the input to an idle worker when the node has nothing to do (see
        node/lending.py)."""
        if self.lender.may_lend() and self._nothing_to_do():
            self._catch_up_all()
            if self.lender.lend(self.workers.values()):
                self._want_news(False)  # until a worker takes a task: see _on_message

    def _select_timeout(self) -> float:
        if self.out.waiting_for_lock:
            return LOCK_RETRY_SECONDS
        wait = min(self.next_load - time.monotonic(), self.load_interval)
        if self.queue and self.workers:
            wait = min(wait, NEWS_POLL_SECONDS)
        return max(0.0, wait)

    def _watch_out_fd(self) -> None:
        """Register writable interest exactly for descriptors with pending bytes."""
        for outbox in [self.out, *(w.outbox for w in self.workers.values())]:
            outbox.flush()
            want = bool(outbox)
            if want and not outbox.watched:
                self.selector.register(outbox.fd, selectors.EVENT_WRITE, outbox)
            elif outbox.watched and not want:
                self.selector.unregister(outbox.fd)
            outbox.watched = want

    # ------------------------------------------------------------------ client side

    def _read_client(self) -> None:
        try:
            alive = worker.receive(self.read_fd, self.conn)
        except BlockingIOError:
            return
        except OSError:
            alive = False
        self.last_heard = time.monotonic()
        if not alive:
            self.running = False
            return
        self.lender.input_read()
        self._take_client_messages()

    def _take_client_messages(self) -> None:
        try:
            while (message := self.conn.next_event()) is not None:
                self._on_message(message)
        except RemoteProtocolError as error:
            self._fail(f"garbage from the client: {error}")
            return
        self.relay.pass_on()

    def _nothing_to_do(self) -> bool:
        """Nothing queued, relayed, half read or on its way: the input may be lent."""
        busy = self.queue or self.relay.active or self.code.waiting or self.files.busy
        waiting = self.files.fetching or self.pending_results or self.conn.buffered()
        return self.running and not busy and not waiting and self.conn.receive_state == "running"

    def _input_back(self, state: WorkerState, back: p.Result) -> None:
        """A worker gave the lent input back: read what it read as if from the input."""
        self.lender.back(state, back)
        if back.payload:
            self.last_heard = time.monotonic()
            self.conn.receive_data(back.payload)
            self._take_client_messages()

    def _on_message(self, message: p.Message) -> None:
        if isinstance(message, p.Configure):
            self._configure(message)
        elif isinstance(message, p.Function):
            self.functions[message.fn_id] = bytes(message.blob)
        elif isinstance(message, p.Tasks):
            if (taker := self.lender.taken(message.tasks)) is not None:
                self._hold(taker, message.tasks)  # it runs them: it read them itself,
                taker.tasks.rotate(1)  # before any the node gave it while it was lent
                self._want_news(True)  # hear when it is done, to lend it the input again
            elif self.relay.active:
                self._end_relay(message.tasks)
            else:
                self.queue.extend(message.tasks)
        elif isinstance(message, p.Cancel):
            self._cancel(set(message.task_ids))
        elif isinstance(message, p.Shutdown):
            self.running = False
        elif isinstance(message, p.FileSync):
            self.files.on_message(message)  # data files (node/files.py)
        elif isinstance(message, (p.CodeOffer, p.Code)):
            try:
                self.code.on_message(message)  # the user's modules (node/code.py)
            except CodeError as error:
                self._fail(str(error))

    def _tell_workers(self, message: p.Message) -> None:
        for state in self.workers.values():  # no relay runs: a frame came in whole
            state.outbox.add(p.encode(message))
            state.outbox.flush()

    def _configure(self, message: p.Configure) -> None:
        self.n_workers = message.workers if message.workers > 0 else hostinfo.cores()
        self.silence_timeout = message.silence_timeout
        self.direct_writes, self.cut_through = message.direct_writes, message.cut_through
        self.lender.enabled = message.lent_input and self.direct_writes and bool(self.client)
        if message.heartbeat > 0:
            self.load_interval = min(LOAD_INTERVAL, message.heartbeat)
            self.next_load = min(self.next_load, time.monotonic() + self.load_interval)
        for _ in range(self.n_workers):
            self._start_worker()

    def _send(self, message: p.Message) -> None:
        self.out.add(self.conn.send(message))
        self.out.flush()

    def _flush_results(self) -> None:
        if self.pending_results:
            self._send(p.Results(tuple(self.pending_results)))
            self.pending_results = []

    def _fail(self, message: str) -> None:
        self.out.add(p.encode(p.NodeFailure(message)))
        self.out.flush()
        self.running = False

    # ------------------------------------------------------------------ cut-through

    def _relay_target(self, fn_id: int) -> WorkerState | None:
        """The worker for a relayed task of ``fn_id``: an idle one, the function shipped."""
        if not self.cut_through or fn_id not in self.functions or self.queue:
            return None  # the usual way: queued once complete, dispatched in turn
        if self.code.waiting or self.files.busy:
            return None  # a code pack or a data sync is on its way: tasks wait for it
        self._catch_up_all()  # a worker whose results went straight to the client is idle
        idle = [w for w in self.workers.values() if not w.tasks]
        if not idle:
            return None
        target = idle[0]
        self._ship_functions(target, {fn_id})
        return target

    def _end_relay(self, tasks: tuple[p.Task, ...]) -> None:
        """The relayed frame is complete: the worker holds its task; send the rest."""
        target = self.relay.target
        if target is None:
            self.queue.extend(tasks)  # it died meanwhile
        else:
            self._hold(target, tasks)
        self.relay.end()

    # ------------------------------------------------------------------ workers

    def _start_worker(self) -> None:
        state = pool.start(self.client if self.direct_writes else None)
        self.workers[state.from_worker] = state
        self.selector.register(state.from_worker, selectors.EVENT_READ, state)

    def _dispatch(self) -> None:
        """Hand queued tasks to workers with room, least loaded first, a batch each."""
        if not self.queue or not self.workers or self.code.waiting or self.files.busy:
            return  # (a code pack or data on its way: tasks must not run without it)
        self._want_news(True)  # before catching up: a delivery from now on is told
        self._catch_up_all()
        limit = self._prefetch()
        relaying = self.relay.target
        for state in sorted(self.workers.values(), key=lambda w: len(w.tasks)):
            if state is relaying:
                continue  # its pipe is inside a frame: nothing else may go in
            room = min(limit - len(state.tasks), len(self.queue))
            if room > 0:
                self._give(state, [self.queue.popleft() for _ in range(room)])
        self._want_news(bool(self.queue) or self.lender.enabled)  # (to lend when all idle)

    def _want_news(self, wanted: bool) -> None:
        if self.client is not None:
            self.client.want_news(wanted)

    def _catch_up_all(self) -> None:
        for state in self.workers.values():
            self._catch_up(state)

    def _catch_up(self, state: WorkerState) -> None:
        """Drop the tasks whose results the worker wrote straight to the client."""
        delivered = state.slot.delivered()
        if delivered != state.seen_delivered:
            state.seen_delivered = delivered
            if self._pop_through(state, delivered) is not None:
                state.cancelled.discard(delivered)

    def _pop_through(self, state: WorkerState, task_id: int) -> p.Task | None:
        """Drop the worker's tasks up to ``task_id``; returns that task (``None`` if the
        worker does not hold it). The ones before it finished first (a worker runs its
        tasks in order) and their results went straight to the client."""
        if task_id not in state.held:
            return None
        while True:
            task = state.tasks.popleft()
            state.held.discard(task.task_id)
            state.timeouts.pop(task.task_id, None)
            if task.task_id == task_id:
                return task
            state.cancelled.discard(task.task_id)

    def _prefetch(self) -> int:
        held = sum(len(w.tasks) for w in self.workers.values())
        return self.pace.prefetch(len(self.queue), held, len(self.workers))

    def _give(self, state: WorkerState, tasks: list[p.Task]) -> None:
        if not self._ship_functions(state, {task.fn_id for task in tasks}):
            return
        self._hold(state, tasks)
        state.outbox.add(p.encode(p.Tasks(tuple(tasks))))
        state.outbox.flush()

    def _ship_functions(self, state: WorkerState, fn_ids: set[int]) -> bool:
        """Queue the functions the worker lacks; ``False`` (the node fails) if unknown."""
        for fn_id in fn_ids - state.functions:
            blob = self.functions.get(fn_id)
            if blob is None:
                self._fail(f"a task refers to unknown function {fn_id}")
                return False
            state.outbox.add(p.encode(p.Function(fn_id, blob)))
            state.functions.add(fn_id)
        return True

    def _hold(self, state: WorkerState, tasks: Sequence[p.Task]) -> None:
        """Count ``tasks`` as the worker's (their frame is on its way to it)."""
        if not state.tasks:
            state.busy_since = time.monotonic()
        state.tasks.extend(tasks)
        state.held.update(task.task_id for task in tasks)
        state.timeouts.update((t.task_id, t.timeout) for t in tasks if t.timeout > 0)

    def _read_worker(self, state: WorkerState) -> None:
        try:
            alive = worker.receive(state.from_worker, state.decoder)
        except BlockingIOError:
            return  # nothing after all: never block the whole node on one worker
        except OSError:
            alive = False
        if not alive:
            self._bury(state)
            return
        try:
            while (message := state.decoder.next_message()) is not None:
                if isinstance(message, p.Results):
                    self._on_worker_results(state, message.results)
        except RemoteProtocolError as error:
            self._fail(f"a worker wrote garbage ({error}); this is a bug")

    def _on_worker_results(self, state: WorkerState, results: tuple[p.Result, ...]) -> None:
        if results and results[0].status == p.INPUT_BACK:  # alone in its frame
            self._input_back(state, results[0])
            return
        if results and results[-1].status == p.OUTPUT:  # lines of a running task only
            self.pending_results.extend(results)
            return
        now = time.monotonic()
        self.pace.sample((now - state.busy_since) / max(1, len(results)))
        state.busy_since = now
        for result in results:
            if result.status == p.OUTPUT:  # printed by the task whose result follows
                self.pending_results.append(result)
                continue
            held = self._pop_through(state, result.task_id) is not None
            if result.status == p.DELIVERED:  # the client has it already
                state.cancelled.discard(result.task_id)
                continue
            if held and result.task_id in state.cancelled:
                state.cancelled.discard(result.task_id)
                result = _status_result(result.task_id, p.CANCELLED, {"exitcode": 0})
            self.pending_results.append(result)

    def _bury(self, state: WorkerState) -> None:
        """A worker died: report the task it was running, re-queue the others, start another."""
        running, _ = state.slot.get()
        exitcode = pool.reap(state.pid)
        self._catch_up(state)
        lost, crashed = self.lender.forget(state, running)
        if lost:
            self._fail(INPUT_LOST)
        self._forget(state)
        info = {"exitcode": exitcode, "pid": state.pid}
        if crashed:  # read by the worker from the lent input: the node never held it
            self.pending_results.append(_status_result(crashed, p.CRASHED, info))
        self._settle(state, running, p.CRASHED, info)
        if self.running:
            self._start_worker()

    def _kill_running(self, state: WorkerState, task_id: int, status: int) -> None:
        """Kill a worker for its running task's sake (timeout or cancel) and replace it."""
        pool.kill(state.pid)
        pool.reap(state.pid)
        self._catch_up(state)
        self._forget(state)
        self._settle(state, task_id, status, {"exitcode": -signal.SIGKILL, "pid": state.pid})
        self._start_worker()

    def _settle(self, state: WorkerState, running: int, status: int, info: dict[str, int]) -> None:
        """A dead worker's tasks: ``running`` gets ``status``, the rest run again elsewhere.

        Tasks it finished but had not reported yet (results are batched) are re-run.
        """
        again = []
        for task in state.tasks:
            if task.task_id == running:
                self.pending_results.append(_status_result(running, status, info))
            elif task.task_id in state.cancelled:
                self.pending_results.append(_status_result(task.task_id, p.CANCELLED, {}))
            else:
                again.append(task)
        self.queue.extendleft(reversed(again))

    def _forget(self, state: WorkerState) -> None:
        del self.workers[state.from_worker]
        self.relay.forget(state)
        state.outbox.discard()
        for fd in (state.from_worker, state.to_worker):
            with contextlib.suppress(KeyError):  # not watched (an empty outbox)
                self.selector.unregister(fd)
            os.close(fd)

    def _cancel(self, task_ids: set[int]) -> None:
        self._catch_up_all()
        kept = collections.deque(t for t in self.queue if t.task_id not in task_ids)
        for task in self.queue:
            if task.task_id in task_ids:
                self.pending_results.append(_status_result(task.task_id, p.CANCELLED, {}))
        self.queue = kept
        for state in list(self.workers.values()):
            state.cancelled.update(t.task_id for t in state.tasks if t.task_id in task_ids)
            running, _ = state.slot.get()
            if running in state.cancelled:
                state.cancelled.discard(running)
                self._kill_running(state, running, p.CANCELLED)

    def _stop_workers(self) -> None:
        for state in list(self.workers.values()):
            pool.kill(state.pid)
        for state in list(self.workers.values()):
            pool.reap(state.pid)
            self._forget(state)

    # ------------------------------------------------------------------ timers

    def _on_clock(self) -> None:
        now = time.monotonic()
        if now - self.last_heard > self.silence_timeout:
            self.running = False
            return
        for state, task_id, status in pool.overdue(list(self.workers.values()), now):
            self._kill_running(state, task_id, status)
        if now >= self.next_load and self.conn.send_state == "running":
            self.next_load = now + self.load_interval
            self._catch_up_all()  # busy workers are counted from the tasks they hold
            busy = sum(1 for w in self.workers.values() if w.tasks)
            self._send(hostinfo.load(self.cpu, busy, self.n_workers))


# ---------------------------------------------------------------------- helpers


def _status_result(task_id: int, status: int, info: dict[str, int]) -> p.Result:
    return p.Result(task_id, status, p.PICKLE, json.dumps(info).encode())


def main() -> None:
    """Entry point: speak the protocol on stdin/stdout until the client goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    protocol_out = os.dup(1)
    grow_pipe(0)
    grow_pipe(protocol_out)
    os.dup2(2, 1)  # a stray print must never corrupt the protocol stream
    Supervisor(0, protocol_out).run()


if __name__ == "__main__":
    main()
