"""A queue node: claim arguments from the store, run them on local workers, write outcomes.

One thread (the caller's: ``ceranubis node`` runs it in the main thread, where it also
takes SIGTERM and SIGINT) runs :meth:`QueueNode.serve`'s cycle:

1. collect finished tasks; write their outcomes in one batch (first writer wins: rows a
   faster node or a cancel finished are left alone, and counted as dropped);
2. stop the tasks of projects that stopped running (cancelled, removed);
3. renew the leases it holds, heartbeat its ``nodes`` row, send others' expired leases
   back to the queue;
4. claim more when few are left (a batch sized to the free places), by priority;
5. sleep until a task finishes, a ``NOTIFY`` arrives, or the next timer.

A small commit may hand its first arguments to this daemon in its ``NOTIFY`` (stored
under the daemon's lease, which its ``nodes`` row names): the listener's thread starts
them at once, without a claim (:mod:`.hearing`); after the listener reconnected, the
cycle starts any it was handed unheard, once it holds nothing.

A store error in any step keeps what is unwritten and retries after a bounded backoff
(PostgreSQL restarted: the connection is made again). On stop it claims nothing more,
lets what runs finish for ``drain`` seconds, writes, releases the rest, and returns 0.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from ..cluster.executor import NodeExecutor
from ..cluster.fastpaths import FastPaths
from ..errors import StoreError
from ..projects.queue_events import Hand, node_payload
from ..projects.queue_fast import FastQueue
from ..projects.queue_listen import Listener
from ..projects.queue_store import PROGRESS_CHANNEL, QUEUE_SCHEMA, Claimed, NodeRow
from ..projects.rows import final_state
from ..projects.store import Store
from ..projects.stores import is_postgres_url, open_store
from ..wire import protocol as p
from .hearing import Hearing
from .held import Held
from .rate import TaskRate
from .runner import Runner
from .tunables import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    BEAT_SECONDS,
    CANCEL_POLL_SECONDS,
    CLAIM_AHEAD_SECONDS,
    CLAIM_PER_WORKER,
    DRAIN_SECONDS,
    IDLE_BEAT_SECONDS,
    IDLE_POLL_PG,
    IDLE_POLL_SQLITE,
    LEASE_SECONDS,
    MAX_HELD,
    PROGRESS_NOTIFY_SECONDS,
    WRITE_SECONDS,
)
from .turns import STAGGER_SECONDS, Turns

log = logging.getLogger("ceranubis")


def _package_version() -> str:
    try:
        return importlib.metadata.version("ceranubis_jupyter")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "source"


# What the nodes table says of this node's version: package and wire protocol.
_VERSION = f"{_package_version()} (protocol {p.PROTOCOL_VERSION})"


class QueueNode(Hearing):
    """A node daemon on ``store``: see the module's docstring.

    Args:
        store: a SQLite path or ``postgresql://`` URL whose queue schema exists
            (``ceranubis node --init``); checked at once.
        workers: worker processes (default: all cores).
        group: serve projects of this group (and those of none).
        name: this node's name in the ``nodes`` table (default ``host:pid``).
        lease: seconds a claim holds without renewal (:data:`LEASE_SECONDS`).
        claim_per_worker: arguments held per worker (:data:`CLAIM_PER_WORKER`).
        drain: seconds to let running tasks finish when stopping.
        poll: seconds an idle node waits before looking for work unwoken.
        stagger: seconds it waits before it claims a commit heard that is another
            node's turn to claim first (:mod:`.turns`).

    Raises:
        StoreError: the store cannot be reached, has no queue schema, or another
            version of it (the message says what to upgrade).
    """

    def __init__(
        self,
        store: str,
        *,
        workers: int | None = None,
        group: str = "",
        name: str | None = None,
        lease: float = LEASE_SECONDS,
        claim_per_worker: int = CLAIM_PER_WORKER,
        drain: float = DRAIN_SECONDS,
        poll: float | None = None,
        stagger: float = STAGGER_SECONDS,
    ) -> None:  # long: the documented signature
        self.store: Store = open_store(store, create=False)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.owner = f"{self.name}#{uuid.uuid4().hex[:8]}"  # a restart holds no old lease
        self.group, self.lease, self.drain = group, lease, drain
        self.workers = workers or os.cpu_count() or 1
        self.base_capacity = self.capacity = self.workers * claim_per_worker
        self._rate = TaskRate()
        pg = is_postgres_url(store)
        self.poll = poll if poll is not None else (IDLE_POLL_PG if pg else IDLE_POLL_SQLITE)
        self._wake = threading.Event()
        self._cycle_lock = threading.Lock()  # the cycle runs in one thread at a time
        self._stopping = threading.Event()
        self.held = Held(self.name, self._wake)
        self._cancel_asked = threading.Event()
        self._progress: dict[int, float] = {}  # project -> when it may be notified again
        self._progress_owed: set[int] = set()  # written since its last notification
        self._exhausted: set[int] = set()  # projects whose last claim found too few
        self._woken: deque[tuple[int, int]] = deque()  # heard commits (id, priority)
        # Arguments commits handed to this daemon (queue_events.Hand), not yet started;
        # only a daemon whose lease the nodes table names is handed any.
        self._hands: deque[Hand] = deque()
        self._handed_to = pg and FastPaths.from_env().queue_hands
        self.lease_id = 0  # its lease row's id, once made
        self._orphans_asked = False  # the listener (re)connected: look for lost hands
        self._adopted: set[int] = set()  # arguments the last such look found
        self.claimed = self.dropped = 0
        self.started = time.time()
        self._timers = dict.fromkeys(("renew", "beat", "expire", "cancel", "write"), 0.0)
        self._backoff = 0.0
        self._retry_at = 0.0  # after a store error: when to try again
        self._look_at = 0.0  # when to look for work again after the queue was empty
        self._turns = Turns(self.name, stagger)
        self._listener = (
            Listener(getattr(self.store, "dsn", ""), self._heard, timer=self._turns.seconds_to_next)
            if pg
            else None
        )
        self.executor: NodeExecutor | None = None
        self.runner: Runner | None = None
        self.status = 0  # serve()'s return: 1 once the local node broke
        self._said = ""  # the state its last heartbeat told the other nodes of
        self._connections = self.store.connections  # when the held work was last checked

    # ------------------------------------------------------------------ public

    def serve(self) -> int:
        """Run until :meth:`stop` (or SIGTERM/SIGINT in the main thread); returns 0, or
        1 when its local node broke (what it held is released for other nodes)."""
        self._install_signals()
        self.executor = NodeExecutor(None, max_workers=self.workers)
        self.executor.scheduler.add_listener(self.held.arrived)
        self.runner = Runner(self.executor, self.held, self.store, self.name, self.workers,
                             self._broke)  # fmt: skip
        if self._listener is not None:
            self._listener.start()
        log.info("node %s serves %s with %d workers", self.name, self.store.url, self.workers)
        try:
            self._safely(lambda: self._beat("running"))
            while not self._stopping.is_set():
                self._wake.clear()
                self._cycle(claim=True)
                self._wake.wait(self._pause())
            self._drain()
        finally:
            self._close()
        return self.status

    def stop(self) -> None:
        """Stop claiming; finish or release what is held; :meth:`serve` then returns."""
        self._stopping.set()
        self._wake.set()

    # ------------------------------------------------------------------ the cycle

    def _cycle(self, claim: bool) -> None:
        with self._cycle_lock:
            self._cycle_held(claim)

    def _cycle_held(self, claim: bool) -> None:
        self._take_hands()
        self.held.collect()
        if (self.held.again or self.held.alone) and self.runner is not None:
            self.runner.run_again()
        now = time.monotonic()
        if now < self._retry_at:
            return  # the store failed: wait out the backoff
        if self._safely(lambda: self._store_work(now, claim)):
            self._backoff = 0.0
        else:
            self._backoff = min(max(self._backoff * 2, BACKOFF_FIRST), BACKOFF_MAX)
            self._retry_at = now + self._backoff

    def _store_work(self, now: float, claim: bool) -> None:
        due = self._write_due(now)
        if self.held.unwritten() and (due or not self.held.tasks or not claim):
            self._write()
        if self._cancel_asked.is_set() or now >= self._timers["cancel"]:
            self._cancel_asked.clear()
            self._stop_cancelled()
            self._timers["cancel"] = now + CANCEL_POLL_SECONDS
        self._timed_work(now, claim)
        if self._orphans_asked and claim and self._holds_nothing():
            self._adopt()
        # Heard events are taken one by one: one heard meanwhile stays for the next cycle.
        woken = [self._woken.popleft() for _ in range(len(self._woken))]
        wants = self.held.size <= self.capacity // 2 and (woken or now >= self._look_at)
        if claim and wants and not self._claim(woken):  # nothing for us: until NOTIFY or poll
            self._look_at = now + self.poll
        elif claim and wants:  # busy again: beat at the busy pace
            self._timers["beat"] = min(self._timers["beat"], now + BEAT_SECONDS)
        self._notify_progress(now)
        if self._listener is not None and self._turns.due_for_peers(now):  # after a claim
            self._turns.set_peers(self.store.nodes(), now)

    def _timed_work(self, now: float, claim: bool) -> None:
        """Renewals, sweeps of expired leases and heartbeats, each when due: at a busy
        pace while the node holds work, at an idle one (cheap for the server) else."""
        busy = bool(self.held.tasks)
        if now >= self._timers["renew"]:
            if busy:
                self.store.renew_leases(self.owner, self.lease)
            self._timers["renew"] = now + self.lease / 3
        if now >= self._timers["expire"]:
            expired = self.store.expire_leases()
            if expired:  # their arguments are pending again: look for work now
                self._look_at = 0.0
            self._settle(sorted({*expired, *self.store.unsettled()}))
            idle_sweep = max(self.lease / 4, min(self.lease, self.poll))
            self._timers["expire"] = now + (self.lease / 4 if busy else idle_sweep)
        if now >= self._timers["beat"]:
            self._beat("running" if claim else "stopping")
            self._timers["beat"] = now + (BEAT_SECONDS if busy else IDLE_BEAT_SECONDS)

    def _write_due(self, now: float) -> bool:
        """Whether the write timer is due (and restart it)."""
        if now >= self._timers["write"]:
            self._timers["write"] = now + WRITE_SECONDS
            return True
        return False

    def _pause(self) -> float:
        if self._backoff:
            return self._backoff
        if self.held.tasks or self.held.unwritten():
            return WRITE_SECONDS
        return min(self.poll, self.lease / 4)

    def _safely(self, work: Callable[[], None]) -> bool:
        try:
            work()
            return True
        except StoreError as error:
            log.warning("node %s: %s; retrying", self.name, error)
            return False

    # ------------------------------------------------------------------ writing

    def _held_still_stored(self) -> bool:
        """After the store's connection was made anew: whether every project this node
        holds work of is still the one it claimed (a server crash may lose a commit just
        announced, and the next commit then gets its ids: queue_fast.DURABLE_AFTER). If
        one is gone or another, nothing held may be written: the node gives it all up
        and stops (status 1); its lease runs out and other nodes run what survived."""
        if not self.store.reconnected_since(self._connections):
            return True
        projects = self.held.every_project()
        births = self.store.project_births(projects)
        self._connections = self.store.connections
        known = self._runner().births
        changed = [p for p in projects if births.get(p) != known.get(p)]
        if not changed:
            return True
        log.error("node %s: projects %s are not the ones it claimed from after the store "
                  "came back (a crash lost them?): giving up what it holds, stopping",
                  self.name, changed)  # fmt: skip
        stopped = self.held.forget_all()
        if self.executor is not None:
            self.executor.scheduler.cancel_threadsafe(stopped)
        self._broke()
        return False

    def _write(self) -> None:
        if not self._held_still_stored():
            return
        held = self.held
        count = held.count()
        touched = set(held.touched)
        changed = self.store.record_outcomes(held.outcomes, held.done_values) if count else 0
        if held.releases:
            self.store.release(self.owner, held.releases)
        held.written()
        self._rate.add(count)
        ahead = int(self._rate.per_second() * CLAIM_AHEAD_SECONDS)
        self.capacity = min(max(self.base_capacity, ahead), MAX_HELD)
        if changed < count:
            self.dropped += count - changed
            log.info("node %s: %d late outcomes dropped", self.name, count - changed)
        self._progress_owed |= touched
        self._settle(sorted(touched & self._exhausted))

    def _notify_progress(self, now: float) -> None:
        """Tell the views of the projects written since their last notification, each
        at most every PROGRESS_NOTIFY_SECONDS (a throttled write is told later)."""
        for project in sorted(self._progress_owed):
            if now >= self._progress.get(project, 0.0):
                self.store.notify(f"outcome:{project}", PROGRESS_CHANNEL)
                self._progress[project] = now + PROGRESS_NOTIFY_SECONDS
                self._progress_owed.discard(project)

    def _settle(self, projects: list[int]) -> None:
        """Give projects with nothing left pending or running their final state."""
        held = set(self.held.projects())  # not finished: counting reads every argument
        for project in (one for one in projects if one not in held):
            counts = self.store.counts(project)
            if counts["pending"] + counts["running"] == 0:
                self.store.settle(project, final_state(counts, cancelled=False))
                self._exhausted.discard(project)
                self._forget(project)
                self._progress.pop(project, None)
                self._progress_owed.discard(project)  # settle told the views

    def _beat(self, state: str) -> None:
        if self._handed_to and not self.lease_id:  # before the row names it
            self.lease_id = self.store.open_lease(self.owner, self.name)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        self.store.beat(
            NodeRow(self.name, socket.gethostname(), os.getpid(), self.workers, self.group,
                    load, _VERSION, QUEUE_SCHEMA, self.claimed, self.held.size,
                    self.held.written_count, self.dropped, self.started, 0.0, state,
                    self.lease_id, self.lease)
        )  # fmt: skip
        if state != self._said:  # started or stopping: the other nodes read who serves
            self.store.notify(node_payload(self.name))
            self._said = state

    # ------------------------------------------------------------------ claiming

    def _claim(self, woken: list[tuple[int, int]]) -> bool:
        """Claim up to the free places, by priority; ``False`` when nothing was found.
        Idle and woken by one commit: claim that project at once, if it comes first."""
        room = self.capacity - self.held.size
        if not self.held.tasks:
            self._rate.restart()
            one = len(woken) == 1 and woken[0][0] >= 0  # a reconnection (-1): look
            at_once = self._claim_woken(*woken[0], room) if one else None
            if at_once is not None:
                return at_once
        found = False
        for project in self.store.queued_projects(self.group):
            if room <= 0:
                break
            claimed = self.store.claim_arguments(project.id, self.owner, self.name, room,
                                                 self.lease)  # fmt: skip
            if len(claimed) < room and project.id not in self._exhausted:
                self._exhausted.add(project.id)
                if not claimed and project.id not in self.held.projects():
                    self._settle([project.id])  # our last outcomes may have been its last
            if claimed:
                found = True
                room -= len(claimed)
                self.claimed += len(claimed)
                self._runner().run(project.id, project.timeout, claimed)
        return found

    def _claim_woken(self, project: int, priority: int, room: int) -> bool | None:
        """One round trip: claim ``project`` (heard committed) and read its function if
        not known; ``None`` when another project has work (then look as usual)."""
        if not isinstance(self.store, FastQueue):
            return None
        unknown = project not in self._runner().functions
        got = self.store.claim_woken(project, priority, self.owner, self.name, room, self.lease,
                                     self.group, unknown)  # fmt: skip
        if got.claimed:
            if len(got.claimed) < room:
                self._exhausted.add(project)
            self.claimed += len(got.claimed)
            self._runner().run(project, got.timeout, got.claimed, got.row)
        return None if got.others else bool(got.claimed)

    def _holds_nothing(self) -> bool:
        held = self.held
        return not (held.tasks or held.unwritten() or held.again or held.alone or self._hands)

    def _adopt(self) -> None:
        """After its listener (re)connected, once it holds nothing: start what commits
        handed it while it could not hear them (stored under its lease; with nothing
        held, every such argument is one)."""
        self._orphans_asked = False
        if not self.lease_id:
            return
        found = self.store.leased_to(self.lease_id)
        self._adopted = {claim.arg_id for claim, _ in found}  # their hands may come yet
        by_project: dict[tuple[int, float], list[Claimed]] = {}
        for claim, timeout in found:
            by_project.setdefault((claim.project, timeout), []).append(claim)
        for (project, timeout), claims in by_project.items():
            log.info("node %s: starts %d arguments of project %d handed to it unheard",
                     self.name, len(claims), project)  # fmt: skip
            self.claimed += len(claims)
            self._exhausted.add(project)  # settled once written, if nothing is left
            self._runner().run(project, timeout, claims)

    # ------------------------------------------------------------------ stopping

    def _stop_cancelled(self) -> None:
        stopped = set(self.store.stopped_projects(self.held.projects()))
        if not stopped:
            return
        self.held.collect()  # what finished meanwhile is written (and counted if late)
        task_ids = self.held.of_projects(stopped)
        self.dropped += len(self.held.drop(task_ids))  # claimed, never to be recorded here
        self.dropped += len(self.held.take_reruns(stopped))
        assert self.executor is not None
        self.executor.scheduler.cancel_threadsafe(task_ids)
        log.info("node %s: stopped %d tasks of projects %s", self.name, len(task_ids),
                 sorted(stopped))  # fmt: skip

    def _drain(self) -> None:
        """Stopping: let running tasks finish for ``drain`` seconds, write, release."""
        self._safely(lambda: self._beat("stopping"))  # no commit hands it more from now
        deadline = time.monotonic() + self.drain
        while self.held.tasks and time.monotonic() < deadline:
            self._wake.clear()
            self._cycle(claim=False)
            self._wake.wait(WRITE_SECONDS)
        if self._listener is not None:
            self._listener.stop()  # no hand arrives after this: those left are given back
        left = list(self.held.tasks)
        if left and self.executor is not None:
            self.held.releases += [h.arg_id for h in self.held.drop(left)]
            self.executor.scheduler.cancel_threadsafe(left)
        self.held.collect()
        self.held.releases += self.held.take_reruns()
        self.held.releases += [arg_id for hand in self._hands for arg_id, _ in hand.args]
        self._hands.clear()
        deadline = time.monotonic() + self.drain + BACKOFF_MAX
        while self.held.unwritten() and time.monotonic() < deadline:
            if not self._safely(self._write):
                time.sleep(BACKOFF_FIRST)
        self._safely(lambda: self._beat("stopped"))

    def _runner(self) -> Runner:
        assert self.runner is not None, "serve() made it"
        return self.runner

    def _forget(self, project: int) -> None:
        if self.runner is not None:
            self.runner.functions.pop(project, None)
            self.runner.births.pop(project, None)

    def _broke(self) -> None:
        """The local node broke: what it held is released; stop with status 1."""
        self.status = 1
        self.stop()

    def _close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, stop_running=True)
        self.store.close()
        log.info("node %s stopped (%d outcomes written)", self.name, self.held.written_count)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # a node served from another thread is stopped by stop()
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: self.stop())


def run_node(store: str, **options: Any) -> int:
    """Serve ``store`` as a node daemon until stopped; returns the exit status (0).

    ``options``: those of :class:`QueueNode`.
    """
    return QueueNode(store, **options).serve()


__all__ = ["QueueNode", "run_node"]
