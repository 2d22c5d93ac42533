"""A store's spare connections: what a run's store gives back at its end, for the next run.

Every run writes through a store of its own (:meth:`Store.reopen`: its connection is not
the one the notebook reads through). Opening that connection is most of a small run's
start on PostgreSQL: the server starts a backend, which then loads its caches and plans
the run's statements again (W1 as a project on a local server, a store holding 30-60
projects: 0.74 of ``map`` with a new connection per run, 0.79 with one kept; in a fresh
database +0.01: benchmarks/README.md, the tenth pass). So when a run's store closes, its
idle connection goes back to the store that opened it, and the next
:meth:`Store.reopen` takes it instead of connecting.

A connection is kept only while nothing about it is in doubt: no transaction open, not
closed or broken, nothing waiting on it unread (a server that ended the session has sent
its goodbye or closed the socket), idle for at most :data:`SPARE_SECONDS` (a timer
thread closes it then, while any spare waits); and at most :data:`SPARES` of them per
store. Closing the store closes its spares. A forked child
neither takes nor closes its parent's spares: they are the parent's sessions.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

# Connections kept per store: one per run that may end while another runs.
SPARES = 2
# Seconds a spare may wait, then it is closed: a server or a firewall may end an idle
# session (a run's write would then fail once), and an idle notebook should not hold
# the server's sessions.
SPARE_SECONDS = 120.0

Connection = TypeVar("Connection")


class Spares(Generic[Connection]):
    """Idle connections of one store, newest last; thread-safe."""

    def __init__(
        self, reusable: Callable[[Connection], bool], close: Callable[[Connection], None]
    ) -> None:
        self._reusable = reusable
        self._close = close
        self._lock = threading.Lock()
        self._idle: list[tuple[float, Connection]] = []
        self._closed = False
        self._pid = os.getpid()
        self._sweeper: threading.Timer | None = None  # closes spares that waited too long

    def _inherited(self) -> bool:
        """Whether this process is a forked child of the one that kept the spares: they
        are the parent's sessions, never to be used or closed here."""
        return os.getpid() != self._pid

    def take(self) -> Connection | None:
        """The newest spare still fit for use, or ``None``; older, unfit ones are closed."""
        if self._inherited():
            return None
        unfit: list[Connection] = []
        found = None
        with self._lock:
            oldest = time.monotonic() - SPARE_SECONDS
            while self._idle and found is None:
                since, connection = self._idle.pop()
                if since >= oldest and self._reusable(connection):
                    found = connection
                else:
                    unfit.append(connection)
        self._close_all(unfit)
        return found

    def give(self, connection: Connection) -> bool:
        """Keep ``connection`` for the next :meth:`take`; ``False`` when it is not kept
        (unfit, already held, enough spares, or the store closed): the caller closes it."""
        if self._inherited():
            return False
        with self._lock:
            held = any(kept is connection for _, kept in self._idle)
            if self._closed or held or len(self._idle) >= SPARES:
                return False
            if not self._reusable(connection):
                return False
            self._idle.append((time.monotonic(), connection))
            self._sweep_later()
            return True

    def close(self) -> None:
        """Close every spare (in a forked child: forget the parent's); from now on
        none is kept."""
        if self._inherited():
            self._closed, self._idle = True, []  # not under the lock: see each()
            return
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            if self._sweeper is not None:
                self._sweeper.cancel()
        self._close_all(connection for _, connection in idle)

    def each(self, action: Callable[[Connection], None]) -> None:
        """Apply ``action`` to each spare (a forked child letting go of the parent's:
        without the lock, which another thread of the parent may have held at the fork)."""
        for _, connection in list(self._idle):
            action(connection)

    def __len__(self) -> int:
        return len(self._idle)

    def _sweep_later(self) -> None:
        """Under the lock: have the oldest spare closed once it waited too long (one
        timer thread while any spare waits; none otherwise)."""
        if self._sweeper is not None or not self._idle:
            return
        due = self._idle[0][0] + SPARE_SECONDS - time.monotonic()
        self._sweeper = threading.Timer(max(0.0, due), self._sweep)
        self._sweeper.daemon = True
        self._sweeper.name = "ceranubis-spares"
        self._sweeper.start()

    def _sweep(self) -> None:
        with self._lock:
            self._sweeper = None
            oldest = time.monotonic() - SPARE_SECONDS
            expired = [connection for since, connection in self._idle if since <= oldest]
            self._idle = [(since, c) for since, c in self._idle if since > oldest]
            if not self._closed:
                self._sweep_later()
        self._close_all(expired)

    def _close_all(self, connections: Iterable[Connection]) -> None:
        for connection in connections:
            with contextlib.suppress(Exception):  # one that cannot close cleanly is gone
                self._close(connection)


__all__ = ["SPARES", "SPARE_SECONDS", "Spares"]
