"""A store's spare connections (projects/spares.py): a run's store gives its connection
back when it closes, and the next ``reopen()`` takes it, on a real SQLite file and a real
PostgreSQL server; what is in doubt is never handed on."""

from __future__ import annotations

import gc
import os
import sqlite3
import weakref
from pathlib import Path

import pytest

from ceranubis_jupyter.errors import StoreError
from ceranubis_jupyter.projects import spares
from ceranubis_jupyter.projects.queue_fast import server_left
from ceranubis_jupyter.projects.records import this_client
from ceranubis_jupyter.projects.spares import SPARES, Spares
from ceranubis_jupyter.projects.store import Store
from ceranubis_jupyter.projects.store_sqlite import SQLiteStore
from ceranubis_jupyter.projects.stores import open_store
from tests.waiting import wait_for

# Seconds to wait for the server to notice a closed session.
SERVER_SECONDS = 30.0


def _backend(store: Store) -> int:
    [(pid,)] = store._read("SELECT pg_backend_pid()")
    return int(pid)


def _given_back(url: str) -> tuple[Store, int]:
    """A store on ``url`` with one spare, and the spare's server process."""
    store = open_store(url)
    run = store.reopen()
    backend = _backend(run)
    run.close()
    return store, backend


def _sessions(url: str) -> set[int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ).fetchall()
    return {int(pid) for (pid,) in rows}


def _sqlite_spares() -> Spares[sqlite3.Connection]:
    """Spares as a SQLite store keeps them."""
    return Spares(SQLiteStore._reusable, sqlite3.Connection.close)


def _memory() -> sqlite3.Connection:
    """A connection as a store opens it: any thread may use and close it."""
    return sqlite3.connect(":memory:", check_same_thread=False)


def _open(connection: sqlite3.Connection) -> bool:
    try:
        connection.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return False
    return True


def _new(store: Store) -> int:
    row, _ = store.add_project(
        "p", "def f(x): return x", "f", ["local"], None, [b"1", b"2"], this_client()
    )
    return row.id


# ---------------------------------------------------------------- the container alone


def test_the_newest_spare_is_taken_first_and_each_once() -> None:
    kept = _sqlite_spares()
    first, second = _memory(), _memory()
    assert kept.give(first) and kept.give(second)
    assert kept.take() is second and kept.take() is first
    assert kept.take() is None


def test_a_spare_is_kept_once_and_at_most_spares_of_them() -> None:
    kept = _sqlite_spares()
    connections = [_memory() for _ in range(SPARES + 1)]
    assert kept.give(connections[0]) and not kept.give(connections[0])  # a second close
    assert all(kept.give(c) for c in connections[1:SPARES])
    assert not kept.give(connections[SPARES])  # the caller closes it
    assert len(kept) == SPARES


def test_a_connection_in_a_transaction_or_closed_is_not_kept() -> None:
    kept = _sqlite_spares()
    busy, closed = _memory(), _memory()
    busy.execute("BEGIN")
    closed.close()
    assert not kept.give(busy) and not kept.give(closed)
    assert kept.take() is None


def test_a_spare_idle_too_long_is_closed_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = _sqlite_spares()
    old = _memory()
    assert kept.give(old)
    monkeypatch.setattr(spares, "SPARE_SECONDS", -1.0)  # every spare is too old now
    assert kept.take() is None
    assert not _open(old)


def test_a_spare_left_waiting_is_closed_by_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spares, "SPARE_SECONDS", 0.05)
    kept = _sqlite_spares()
    first, second = _memory(), _memory()
    assert kept.give(first) and kept.give(second)
    wait_for(lambda: len(kept) == 0, 30.0, "both spares closed by the timer")
    assert not _open(first) and not _open(second)
    wait_for(lambda: kept._sweeper is None, 30.0, "the timer gone once no spare waits")


def test_closing_closes_the_spares_and_keeps_no_more() -> None:
    kept = _sqlite_spares()
    spare, later = _memory(), _memory()
    assert kept.give(spare)
    kept.close()
    assert not _open(spare)
    assert not kept.give(later) and _open(later)


# ---------------------------------------------------------------- SQLite stores


def test_a_reopened_sqlite_store_takes_the_connection_an_earlier_one_gave_back(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "s.sqlite")
    run = store.reopen()
    connection = run._connection  # type: ignore[attr-defined]
    run.close()
    run.close()  # twice: given back once
    again, other = store.reopen(), store.reopen()
    assert again._connection is connection  # type: ignore[attr-defined]
    assert other._connection is not connection  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="closed database"):
        run.list_projects()  # the closed store does not reach the connection it gave
    assert again.list_projects() == []
    for each in (again, other, store):
        each.close()
    assert not _open(connection)  # the store's close closed its spares


def test_a_store_left_unclosed_is_freed_at_once_with_its_spares(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite")
    store.reopen().close()  # one spare
    freed = weakref.ref(store)
    gc.disable()  # by reference counting alone: no cycle through the spares
    try:
        del store
        assert freed() is None
    finally:
        gc.enable()


# ---------------------------------------------------------------- PostgreSQL stores


def test_the_next_run_store_talks_to_the_same_backend(pg_url: str) -> None:
    store, backend = _given_back(pg_url)
    again = store.reopen()
    assert _backend(again) == backend
    assert again.list_projects() == []  # sound: it reads
    again.close()
    store.close()
    wait_for(lambda: backend not in _sessions(pg_url), SERVER_SECONDS, "the spare's session ended")


def test_a_spare_whose_session_the_server_ended_is_not_taken(pg_url: str) -> None:
    import psycopg

    store, backend = _given_back(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as admin:  # waits for the backend's end
        assert admin.execute("SELECT pg_terminate_backend(%s, 30000)", (backend,)).fetchone()
    ((_, spare),) = store._spares._idle
    wait_for(lambda: server_left(spare), SERVER_SECONDS, "the server's goodbye arrived")
    again = store.reopen()
    _new(again)  # a write, which is not retried on a new connection as reads are
    assert _backend(again) != backend
    again.close()
    store.close()


def test_a_run_store_closed_inside_a_transaction_gives_nothing_back(pg_url: str) -> None:
    store = open_store(pg_url)
    run = store.reopen()
    backend = _backend(run)
    run._connection.execute("BEGIN")  # type: ignore[attr-defined]
    run.close()
    again = store.reopen()
    assert _backend(again) != backend
    again.close()
    store.close()


def test_a_forked_child_leaves_the_parents_spares_alone(pg_url: str) -> None:
    store, backend = _given_back(pg_url)
    pid = os.fork()
    if pid == 0:  # the child: let go of the parent's sessions, then exit as it would
        status = 1
        try:
            store.leave_to_parent()
            store.close()  # closes the spares' connections: their sockets are /dev/null
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    again = store.reopen()
    assert _backend(again) == backend  # the session the child let go of is the parent's
    assert again.list_projects() == []
    again.close()
    store.close()


def test_a_forked_child_neither_takes_nor_closes_the_parents_spares(pg_url: str) -> None:
    store, backend = _given_back(pg_url)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a run store of its own, then every store closed
        status = 1
        try:
            run = store.reopen()
            os.write(write_end, str(_backend(run)).encode())
            run.close()
            store._spares.close()  # what the store's close does to its spares
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as reported:
        childs = int(reported.read())
    assert os.waitstatus_to_exitcode(status) == 0
    assert childs != backend  # not the parent's session
    again = store.reopen()
    assert _backend(again) == backend  # still the parent's spare, and sound
    assert again.list_projects() == []
    again.close()
    store.close()
