"""The ``LISTEN`` side of queue mode: a thread that hears the store's queue events, and
what a client's view of a queued project needs (its nodes as host rows, a wake-up on
each of its events).

PostgreSQL delivers a ``NOTIFY`` sent in a transaction when it commits; the thread hands
each payload (``commit:<id>``, ``cancel:<id>`` on :data:`CHANNEL`; ``outcome:<id>`` on
:data:`PROGRESS_CHANNEL`, which only the views hear) to a callback that must be quick
(it sets an event). A lost connection is made again with bounded backoff, and
the callback then gets :data:`RECONNECTED`: events sent meanwhile were lost, so the
listener's owner looks at the store itself.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .queue_store import CHANNEL, NODE_SILENT_SECONDS, PROGRESS_CHANNEL, NodeRow
from .store import Store
from .store_pg import tcp_options

log = logging.getLogger("ceranubis")

# Seconds one wait for notifications lasts: how soon the thread notices it should stop.
LISTEN_WAKE_SECONDS = 0.5
# Backoff between reconnection attempts: the first pause, and the longest.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 5.0
# Seconds to wait for the server when connecting.
CONNECT_TIMEOUT = 5
# The payload handed over after a (re)connection.
RECONNECTED = "listening"
# The payload handed over when the owner's timer (``Listener``'s ``timer``) ran out.
TIMER = "timer"


class Listener:
    """Hears queue events on ``dsn`` in a daemon thread until :meth:`stop` (on
    ``channels``: the daemons' by default).

    ``timer``, if given, says in how many seconds its owner wants :data:`TIMER` handed
    over (``inf``: not at all); it is asked again after each event, so an event may set
    it. The owner's deferred work then runs in this thread, whose wait for events
    already lasts until then, without waking another one.
    """

    def __init__(
        self,
        dsn: str,
        on_event: Callable[[str], None],
        channels: tuple[str, ...] = (CHANNEL,),
        timer: Callable[[], float] | None = None,
    ) -> None:
        self._dsn = dsn
        self._on_event = on_event
        self._channels = channels
        self._timer = timer
        self._stopped = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._main, name="ceranubis-listen", daemon=True)

    def start(self) -> None:
        """Start listening (the first connection is made in the thread)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop, and wait (bounded) for the thread to end."""
        self._stopped.set()
        self._thread.join(LISTEN_WAKE_SECONDS * 4)

    def _main(self) -> None:
        import psycopg

        pause = RECONNECT_FIRST
        while not self._stopped.is_set():
            try:
                with psycopg.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT,
                    **tcp_options(self._dsn),
                ) as connection:
                    for channel in self._channels:
                        connection.execute(f"LISTEN {channel}")
                    pause = RECONNECT_FIRST
                    self._on_event(RECONNECTED)
                    self.connected.set()
                    self._hear(connection)
            except psycopg.Error as error:
                self.connected.clear()
                log.debug("queue listener: %s; reconnecting in %.1f s", error, pause)
                self._stopped.wait(pause)
                pause = min(pause * 2, RECONNECT_MAX)

    def _hear(self, connection: Any) -> None:
        timer = self._timer or (lambda: math.inf)
        while not self._stopped.is_set():
            wait = max(0.0, min(LISTEN_WAKE_SECONDS, timer()))
            for notice in connection.notifies(timeout=wait, stop_after=1):  # then ask again
                self._on_event(notice.payload)
            if timer() <= 0:
                self._on_event(TIMER)


@dataclass(frozen=True)
class NodeInfo:
    """A node daemon as a host row of the progress view (``HostInfo``'s fields)."""

    host: str
    state: str
    busy: int
    workers: int
    done: int
    loadavg: float
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    error: str = ""

    @classmethod
    def of(cls, row: NodeRow, now: float) -> NodeInfo:
        silent = row.state != "stopped" and now - row.heartbeat > NODE_SILENT_SECONDS
        state = "lost" if silent else {"running": "ready"}.get(row.state, row.state)
        return cls(row.name, state, min(row.held, row.workers), row.workers, row.done, row.load)


class QueueNodes:
    """The node daemons of a store, read as an executor's ``hosts()`` (for the views)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def hosts(self) -> list[NodeInfo]:
        """Every node that beat within the last minute, or is running."""
        now = self.store.database_time()
        rows = self.store.nodes()
        return [NodeInfo.of(r, now) for r in rows if r.state == "running" or now - r.heartbeat < 60]


def watch(store: Store, project: int, callback: Callable[[], None]) -> Listener | None:
    """Call ``callback()`` on each event of ``project`` (PostgreSQL: a started
    :class:`Listener`, to stop when done); ``None`` on SQLite (poll instead)."""
    dsn = getattr(store, "dsn", None)
    if dsn is None:
        return None
    mine = {f"{kind}:{project}" for kind in ("commit", "cancel", "outcome")}

    def heard(payload: str) -> None:
        # A commit's payload goes on with its priority and group: only its head names it.
        if payload.split(" ", 1)[0] in mine or payload == RECONNECTED:
            callback()

    listener = Listener(dsn, heard, (CHANNEL, PROGRESS_CHANNEL))
    listener.start()
    return listener


__all__ = ["RECONNECTED", "TIMER", "Listener", "NodeInfo", "QueueNodes", "watch"]
