"""The queue's claims in the store (schema 2): from ``next_id``, back below it when
arguments become pending again, and the arguments' indexes that keep updates HOT.

Store calls only (no daemons), once on a SQLite file and once on a real PostgreSQL server.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest

from ceranubis_jupyter import commit_project
from ceranubis_jupyter.errors import StoreError
from ceranubis_jupyter.projects import queue_claims
from ceranubis_jupyter.projects.queue_store import ARGUMENTS_FILLFACTOR, QUEUE_SCHEMA
from ceranubis_jupyter.projects.store import Store
from ceranubis_jupyter.projects.stores import is_postgres_url, open_store
from tests.queue_helpers import CODE, PROJECT_SECONDS
from tests.waiting import wait_for

# Seconds of the leases these tests take (none runs out unless a test makes it).
LEASE = 600.0
# Arguments of each test's project.
ARGUMENTS = 40
# Columns a claim, a renewal or an outcome changes: no index of the arguments may name them.
CHANGING = ("state", "lease", "host", "started", "attempts", "result")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    opened.init_queue()
    yield opened
    opened.close()


def _project(url: str) -> int:
    project = commit_project(CODE, "square", [(i,) for i in range(ARGUMENTS)], store=url,
                             queue=True, reuse=False)  # fmt: skip
    return project.id


def _execute(url: str, sql: str) -> list[tuple[object, ...]]:
    if is_postgres_url(url):
        import psycopg

        with psycopg.connect(url, autocommit=True) as connection:
            cursor = connection.execute(sql.encode())
            return list(cursor.fetchall()) if cursor.description else []
    with sqlite3.connect(url) as connection:
        return list(connection.execute(sql).fetchall())


def _ids(store: Store, project: int, owner: str, count: int) -> list[int]:
    return [c.arg_id for c in store.claim_arguments(project, owner, "h", count, LEASE)]


def test_claims_take_the_lowest_pending_ids_once_each(store_url: str, store: Store) -> None:
    project = _project(store_url)
    first = _ids(store, project, "a", 15)
    second = _ids(store, project, "b", 15)
    rest = _ids(store, project, "a", 100)
    assert len(first) == len(second) == 15 and len(rest) == ARGUMENTS - 30
    assert first + second + rest == sorted(first + second + rest)  # by id, none twice
    assert _ids(store, project, "b", 10) == []  # nothing left pending
    assert store.counts(project)["running"] == ARGUMENTS


def test_released_arguments_are_claimed_again_first(store_url: str, store: Store) -> None:
    project = _project(store_url)
    held = _ids(store, project, "a", 20)
    assert store.release("a", held[3:6]) == 3
    again = store.claim_arguments(project, "b", "h", 5, LEASE)
    assert [c.arg_id for c in again] == [*held[3:6], held[-1] + 1, held[-1] + 2]
    assert [c.attempts for c in again[:3]] == [1, 1, 1]  # a release counts no attempt
    assert store.release("a") == 17  # all it still holds
    assert sorted(_ids(store, project, "c", 100)) == sorted(
        [*held[:3], *held[6:], *range(held[-1] + 3, held[0] + ARGUMENTS)]
    )


def test_expired_leases_go_back_to_the_queue(store_url: str, store: Store) -> None:
    project = _project(store_url)
    lost = [c.arg_id for c in store.claim_arguments(project, "gone", "h", 10, -1.0)]
    kept = _ids(store, project, "alive", 10)
    assert store.expire_leases() == [project]
    again = store.claim_arguments(project, "alive", "h", 10, LEASE)
    assert [c.arg_id for c in again] == lost and {c.attempts for c in again} == {2}
    # A renewal moves the daemon's one lease row, whatever it holds (schema 3).
    assert store.renew_leases("alive", LEASE) == 1 and store.renew_leases("never", LEASE) == 0
    assert store.expire_leases() == [] and store.counts(project)["running"] == 20
    assert store.renew_leases("alive", -1.0) == 1  # as a daemon that went silent
    assert store.expire_leases() == [project] and store.counts(project)["running"] == 0
    assert len(kept) == 10


def test_a_pending_argument_left_below_next_id_is_still_claimed(
    store_url: str, store: Store
) -> None:
    project = _project(store_url)
    held = _ids(store, project, "a", ARGUMENTS)
    # As a claim that rolled back after another moved next_id past it would leave it.
    _execute(store_url, f"UPDATE arguments SET state = 'pending' WHERE id = {held[7]}")
    assert _ids(store, project, "b", 10) == [held[7]]


def test_one_look_below_next_id_serves_every_node(
    store_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a project's end every node's claim finds nothing; the look below next_id (a
    scan of the project) is made once per REWIND_SECONDS for all of them."""
    monkeypatch.setattr(queue_claims, "REWIND_SECONDS", 3600.0)  # no second look here
    project = _project(store_url)
    held = _ids(store, project, "a", ARGUMENTS)
    assert _ids(store, project, "a", 10) == []  # the look is made: nothing below
    _execute(store_url, f"UPDATE arguments SET state = 'pending' WHERE id = {held[7]}")
    other = open_store(store_url, create=False)  # another node
    try:
        assert _ids(other, project, "b", 10) == []  # the project was looked at already
        _execute(store_url, f"UPDATE queue_projects SET rewound = 0 WHERE project = {project}")
        assert _ids(other, project, "b", 10) == [held[7]]
    finally:
        other.close()


def test_a_requeued_project_is_claimed_from_its_first_unfinished_argument(
    store_url: str, store: Store
) -> None:
    project = _project(store_url)
    held = _ids(store, project, "a", ARGUMENTS)
    assert store.requeue(project, (0, "", 0.0)) == ARGUMENTS
    assert _ids(store, project, "b", 5) == held[:5]


def test_no_index_names_a_column_that_claims_or_outcomes_change(
    store_url: str, store: Store
) -> None:
    if is_postgres_url(store_url):
        rows = _execute(store_url, "SELECT indexdef FROM pg_indexes WHERE tablename = 'arguments'")
        options = _execute(store_url, "SELECT reloptions FROM pg_class WHERE relname = 'arguments'")
        assert f"fillfactor={ARGUMENTS_FILLFACTOR}" in str(options[0][0])
    else:
        rows = _execute(store_url, "SELECT sql FROM sqlite_master WHERE type = 'index' AND "
                                   "tbl_name = 'arguments' AND sql IS NOT NULL")  # fmt: skip
    definitions = [str(row[0]) for row in rows]
    assert any("(project, id)" in d for d in definitions), definitions
    assert not any(re.search(r"\(project\)", d) for d in definitions), definitions
    for definition in definitions:
        assert not any(re.search(rf"\b{c}\b", definition) for c in CHANGING), definition


def _index_exists(store_url: str, name: str) -> bool:
    if is_postgres_url(store_url):
        return bool(_execute(store_url, f"SELECT 1 FROM pg_indexes WHERE indexname = '{name}'"))
    return bool(_execute(store_url, f"SELECT 1 FROM sqlite_master WHERE name = '{name}'"))


def test_a_schema_1_store_is_refused_then_upgraded_by_init(store_url: str, store: Store) -> None:
    project = _project(store_url)
    _execute(store_url, "CREATE INDEX arguments_queue ON arguments (project, id) "
                        "WHERE state = 'pending'")  # fmt: skip
    _execute(store_url, "UPDATE ceranubis_meta SET value = '1' WHERE key = 'queue_schema'")
    if is_postgres_url(store_url):  # as a store made before the arguments' storage tuning
        _execute(store_url, "ALTER TABLE arguments RESET (fillfactor)")
        _execute(store_url, "ALTER TABLE arguments ADD CONSTRAINT arguments_project_fkey "
                            "FOREIGN KEY (project) REFERENCES projects(id)")  # fmt: skip
    with pytest.raises(StoreError, match="older than this package"):
        store.check_queue()
    _execute(store_url, "CREATE INDEX arguments_project ON arguments (project)")  # as before
    store.init_queue()  # what the refusal says to run
    store.check_queue()
    assert store.queue_schema() == QUEUE_SCHEMA == 4
    assert not _execute(store_url, "SELECT 1 FROM sqlite_master WHERE name = 'arguments_queue'"
                        if not is_postgres_url(store_url) else
                        "SELECT 1 FROM pg_indexes WHERE indexname = 'arguments_queue'")  # fmt: skip
    if is_postgres_url(store_url):
        options = _execute(store_url, "SELECT reloptions FROM pg_class WHERE relname = 'arguments'")
        assert f"fillfactor={ARGUMENTS_FILLFACTOR}" in str(options[0][0])
        assert not _execute(store_url, "SELECT 1 FROM pg_constraint WHERE contype = 'f' AND "
                                       "conrelid = 'arguments'::regclass")  # fmt: skip
    assert not _index_exists(store_url, "arguments_project")
    assert len(_ids(store, project, "a", 100)) == ARGUMENTS


def test_a_schema_3_store_is_refused_then_given_the_reuse_index_by_init(
    store_url: str, store: Store
) -> None:
    project = _project(store_url)
    if is_postgres_url(store_url):  # as schema 3 left it: no hash of the arguments' bytes
        _execute(store_url, "DROP INDEX arguments_args")
    _execute(store_url, "UPDATE ceranubis_meta SET value = '3' WHERE key = 'queue_schema'")
    with pytest.raises(StoreError, match="older than this package"):
        store.check_queue()
    store.init_queue()
    store.check_queue()
    assert store.queue_schema() == QUEUE_SCHEMA
    if is_postgres_url(store_url):
        found = _execute(store_url, "SELECT indexdef FROM pg_indexes WHERE indexname = "
                                    "'arguments_args'")  # fmt: skip
        assert "USING hash (args)" in str(found[0][0])
    else:  # SQLite's small commits look up reuse in commit.py: no such index
        assert not _index_exists(store_url, "arguments_args")
    assert len(_ids(store, project, "a", 100)) == ARGUMENTS


def test_a_schema_2_store_s_leases_become_rows_at_init(store_url: str, store: Store) -> None:
    project = _project(store_url)
    held = _ids(store, project, "a", 5)
    # As schema 2 left them: an owner and an expiry on each held argument, no lease rows.
    if is_postgres_url(store_url):
        _execute(store_url, "ALTER TABLE arguments ADD COLUMN lease_owner TEXT, "
                            "ADD COLUMN lease_expires DOUBLE PRECISION")  # fmt: skip
    else:
        _execute(store_url, "ALTER TABLE arguments ADD COLUMN lease_owner TEXT")
        _execute(store_url, "ALTER TABLE arguments ADD COLUMN lease_expires REAL")
    _execute(store_url, "UPDATE arguments SET lease_owner = 'old#1', lease_expires = 1, "
                        "lease = NULL WHERE state = 'running'")  # fmt: skip
    _execute(store_url, "DELETE FROM queue_leases")
    _execute(store_url, "ALTER TABLE queue_projects DROP COLUMN rewound")
    _execute(store_url, "UPDATE ceranubis_meta SET value = '2' WHERE key = 'queue_schema'")
    with pytest.raises(StoreError, match="older than this package"):
        store.check_queue()
    store.init_queue()
    assert store.queue_schema() == QUEUE_SCHEMA == 4
    assert store.expire_leases() == [project]  # the old owner's lease (long over), as a row
    again = store.claim_arguments(project, "b", "h", 5, LEASE)
    assert [c.arg_id for c in again] == held and {c.attempts for c in again} == {2}
    rest = _ids(store, project, "b", 100)
    _execute(store_url, f"UPDATE arguments SET state = 'pending' WHERE id = {rest[0]}")
    assert _ids(store, project, "c", 10) == [rest[0]]  # looked below next_id: rewound is back


def _lock_waits(url: str) -> int:
    rows = _execute(url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                         "'Lock' AND datname = current_database()")  # fmt: skip
    return int(str(rows[0][0]))


def test_a_cancel_waits_for_a_claim_under_way(pg_url: str) -> None:
    """A cancel locks the project's queue row first, as a claim does: it never holds
    argument rows that a claim waits for while waiting for rows the claim holds."""
    import psycopg

    store = open_store(pg_url)
    store.init_queue()
    project = _project(pg_url)
    cancelled: list[int] = []
    worker = threading.Thread(target=lambda: cancelled.append(store.cancel_unfinished(project)))
    try:
        with psycopg.connect(pg_url) as claim:  # as a claim under way: the row locked
            claim.execute("SELECT 1 FROM queue_projects WHERE project = %s FOR NO KEY UPDATE",
                          (project,))  # fmt: skip
            worker.start()
            wait_for(lambda: _lock_waits(pg_url) == 1, PROJECT_SECONDS, "the cancel waiting")
            assert cancelled == [] and _still_pending(pg_url, project)
            claim.rollback()
        worker.join(PROJECT_SECONDS)
        assert cancelled == [ARGUMENTS]
    finally:
        store.close()


def _still_pending(url: str, project: int) -> bool:
    rows = _execute(url, f"SELECT count(*) FROM arguments WHERE project = {project} "
                         "AND state = 'pending'")  # fmt: skip
    return int(str(rows[0][0])) == ARGUMENTS


# Threads claiming one project at once in the stress test, and the most claims each makes
# (a claim that finds nothing looks below next_id at most every REWIND_SECONDS, so a
# thread may go round many times before it finds an argument a race left there).
CLAIMERS = 4
MOST_CLAIMS = 100_000


def test_concurrent_claims_and_releases_hold_each_argument_once(
    store_url: str, store: Store
) -> None:
    project = _project(store_url)
    holding: set[int] = set()
    guard = threading.Lock()
    twice: list[int] = []

    def claimer(owner: str) -> None:
        mine = open_store(store_url, create=False)
        deadline = time.monotonic() + PROJECT_SECONDS
        try:
            for turn in range(MOST_CLAIMS):
                if time.monotonic() > deadline:
                    return
                ids = _ids(mine, project, owner, 3)
                with guard:
                    twice.extend(i for i in ids if i in holding)
                    holding.update(ids)
                    if not ids and mine.counts(project)["pending"] == 0:
                        return
                    given_back = ids[:1] if turn % 2 else []
                    holding.difference_update(given_back)  # before another can take it
                if given_back:
                    mine.release(owner, given_back)
        finally:
            mine.close()

    threads = [threading.Thread(target=claimer, args=(f"t{n}",)) for n in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PROJECT_SECONDS)
    assert not any(thread.is_alive() for thread in threads)
    assert twice == []
    assert store.counts(project)["running"] == ARGUMENTS == len(holding)
