"""The ``LISTEN`` side of queue mode: a thread that hears the store's queue events.

PostgreSQL delivers a ``NOTIFY`` sent in a transaction when it commits; the thread hands
each payload (``commit:<id>``, ``cancel:<id>``, ``outcome:<id>``) to a callback that must
be quick (it sets an event). A lost connection is made again with bounded backoff, and
the callback then gets :data:`RECONNECTED`: events sent meanwhile were lost, so the
listener's owner looks at the store itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..projects.queue_store import CHANNEL
from ..projects.store_pg import tcp_options

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


class Listener:
    """Hears queue events on ``dsn`` in a daemon thread until :meth:`stop`."""

    def __init__(self, dsn: str, on_event: Callable[[str], None]) -> None:
        self._dsn = dsn
        self._on_event = on_event
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
                    connection.execute(f"LISTEN {CHANNEL}")
                    pause = RECONNECT_FIRST
                    self.connected.set()
                    self._on_event(RECONNECTED)
                    self._hear(connection)
            except psycopg.Error as error:
                self.connected.clear()
                log.debug("queue listener: %s; reconnecting in %.1f s", error, pause)
                self._stopped.wait(pause)
                pause = min(pause * 2, RECONNECT_MAX)

    def _hear(self, connection: Any) -> None:
        while not self._stopped.is_set():
            for notice in connection.notifies(timeout=LISTEN_WAKE_SECONDS):
                self._on_event(notice.payload)


__all__ = ["RECONNECTED", "Listener"]
