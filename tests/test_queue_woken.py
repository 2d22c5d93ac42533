"""Queue mode's one-round-trip paths on PostgreSQL (``projects/queue_fast.py``): a small
queued project stored in one statement, and the claim of a daemon woken by a commit,
which must honour priorities, age and groups like the usual look."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from ceranubis_jupyter import Project, commit_project
from ceranubis_jupyter.errors import ConfigError
from ceranubis_jupyter.projects.queue_events import commit_payload, parse_commit
from ceranubis_jupyter.projects.queue_fast import AT_ONCE_ARGUMENTS
from ceranubis_jupyter.projects.queue_listen import Listener
from ceranubis_jupyter.projects.records import QUEUE_CLIENT
from ceranubis_jupyter.projects.store_pg import PostgresStore
from ceranubis_jupyter.projects.stores import open_store
from tests.queue_helpers import CODE, DAEMON_SECONDS, PROJECT_SECONDS, Daemons
from tests.waiting import wait_for

LEASE = 30.0


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = open_store(pg_url)
    opened.init_queue()
    assert isinstance(opened, PostgresStore)
    yield opened
    opened.close()


def _queued(url: str, name: str, count: int, priority: int = 0, group: str = "") -> int:
    args = [(i,) for i in range(count)]
    project = commit_project(CODE, "square", args, name=name, store=url, queue=True,
                             priority=priority, group=group)  # fmt: skip
    return int(project.id)


def test_commit_payloads_carry_priority_and_group() -> None:
    assert parse_commit(commit_payload(12, -3, "gpu a")) == (12, -3, "gpu a")
    assert parse_commit(commit_payload(5, 0, "")) == (5, 0, "")
    assert parse_commit("commit:7") == (7, 0, "")  # a payload without them
    assert parse_commit("cancel:7") is None
    assert parse_commit("commit:x 1 g") is None


def test_a_small_queued_project_is_stored_and_announced_in_one_statement(
    pg_url: str, store: PostgresStore
) -> None:
    heard: list[str] = []
    listener = Listener(pg_url, heard.append)
    listener.start()
    try:
        assert listener.connected.wait(DAEMON_SECONDS)
        project = _queued(pg_url, "small", 3, priority=4, group="gpu")
        wait_for(lambda: f"commit:{project} 4 gpu" in heard, DAEMON_SECONDS, "the commit's event")
    finally:
        listener.stop()
    loaded = Project.load("small", pg_url)
    assert loaded.state == "running" and loaded.counts()["pending"] == 3
    rows = store.arguments(project, ["pending"])
    assert [r.position for r in rows] == [0, 1, 2]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    with psycopg.connect(pg_url, autocommit=True) as connection:
        queued = connection.execute(
            "SELECT priority, node_group FROM queue_projects WHERE project = %s", (project,)
        ).fetchall()
    assert queued == [(4, "gpu")]


def test_a_name_taken_by_a_one_statement_insert_is_refused_and_nothing_is_left(
    store: PostgresStore,
) -> None:
    row, ids = store.add_project("dup", CODE, "square", [], None, [b"x"], QUEUE_CLIENT,
                                 queued=(0, "", 0.0))  # fmt: skip
    assert len(ids) == 1
    with pytest.raises(ConfigError, match="already exists"):
        store.add_project("dup", CODE, "square", [], None, [b"y"], QUEUE_CLIENT,
                          queued=(0, "", 0.0))  # fmt: skip
    assert store.versions("dup") == [row.id]
    assert len(store.argument_blobs(row.id)) == 1


def test_a_large_queued_project_still_goes_through_copy(pg_url: str, store: PostgresStore) -> None:
    project = _queued(pg_url, "large", AT_ONCE_ARGUMENTS + 1)
    assert store.counts(project)["pending"] == AT_ONCE_ARGUMENTS + 1


def test_a_woken_claim_takes_nothing_while_a_higher_priority_project_waits(
    pg_url: str, store: PostgresStore
) -> None:
    high = _queued(pg_url, "high", 2, priority=5)
    low = _queued(pg_url, "low", 1, priority=0)
    got = store.claim_woken(low, 0, "n#1", "n", 8, LEASE, "", True)
    assert got.claimed == [] and got.others and got.row is None
    assert store.counts(low)["pending"] == 1
    got = store.claim_woken(high, 5, "n#1", "n", 8, LEASE, "", True)
    assert [c.project for c in got.claimed] == [high, high] and got.others
    assert got.row is not None and got.row.target == "square" and got.row.id == high
    got = store.claim_woken(low, 0, "n#1", "n", 8, LEASE, "", False)  # high is all claimed
    assert len(got.claimed) == 1 and not got.others and got.row is None
    assert store.counts(high)["running"] == 2 and store.counts(low)["running"] == 1


def test_a_woken_claim_serves_the_older_of_equal_priorities_first(
    pg_url: str, store: PostgresStore
) -> None:
    older = _queued(pg_url, "older", 1)
    newer = _queued(pg_url, "newer", 1)
    assert store.claim_woken(newer, 0, "n#1", "n", 8, LEASE, "", False).claimed == []
    assert len(store.claim_woken(older, 0, "n#1", "n", 8, LEASE, "", False).claimed) == 1
    got = store.claim_woken(newer, 0, "n#1", "n", 8, LEASE, "", False)
    assert len(got.claimed) == 1 and not got.others


def test_a_woken_claim_keeps_to_groups(pg_url: str, store: PostgresStore) -> None:
    gpu = _queued(pg_url, "gpu", 1, group="gpu")
    plain = _queued(pg_url, "plain", 1)
    got = store.claim_woken(gpu, 0, "n#1", "n", 8, LEASE, "", False)
    assert got.claimed == [] and got.others  # not its group; another project waits
    assert len(store.claim_woken(gpu, 0, "g#1", "g", 8, LEASE, "gpu", False).claimed) == 1
    got = store.claim_woken(plain, 0, "g#1", "g", 8, LEASE, "gpu", False)
    assert len(got.claimed) == 1 and not got.others  # a group's node serves ungrouped ones


def test_a_woken_daemon_serves_a_higher_priority_project_it_was_not_told_of_first(
    pg_url: str, daemons: Daemons
) -> None:
    daemons.start(pg_url, "plain")
    with psycopg.connect(pg_url, autocommit=True) as connection:

        def listening() -> bool:
            found = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"
            ).fetchone()
            return found is not None and found[0] == 1

        wait_for(listening, DAEMON_SECONDS, "the daemon's LISTEN")
        # Queued for another group (the daemon ignores its commit), then moved to every
        # node without a NOTIFY: it waits, and the daemon does not know it.
        high = _queued(pg_url, "unheard", 3, priority=5, group="elsewhere")
        connection.execute("UPDATE queue_projects SET node_group = '' WHERE project = %s", (high,))
        low = _queued(pg_url, "heard", 1, priority=0)
    for project in (Project.load(high, pg_url), Project.load(low, pg_url)):
        assert project.wait(PROJECT_SECONDS), daemons.logs()
    store = open_store(pg_url)
    try:
        started_high = [r.started or 0 for r in store.arguments(high, ["done"])]
        started_low = [r.started or 0 for r in store.arguments(low, ["done"])]
    finally:
        store.close()
    assert len(started_high) == 3 and len(started_low) == 1
    assert max(started_high) <= min(started_low)  # claimed in priority order


def test_a_default_named_queued_commit_picks_its_name_and_reuses_results_as_before(
    store_url: str, daemons: Daemons
) -> None:
    # On PostgreSQL the store decides both in the insert; on SQLite commit.py does.
    store = open_store(store_url)
    store.add_project("square_2", CODE, "square", [], None, [b"x"], "someone")  # taken
    first = commit_project(CODE, "square", [(1,), (2,)], store=store_url, queue=True)
    assert first.name == "square_3"  # from n = the names taken + 1
    daemons.start(store_url, "plain")
    assert first.wait(PROJECT_SECONDS), daemons.logs()
    second = commit_project(CODE, "square", [(2,), (3,)], store=store_url, queue=True)
    assert second.name == "square_4"  # square_1 is free, but n starts at 3
    assert store.reused_count(second.id) == 1  # (2,) took the first project's result
    assert second.wait(PROJECT_SECONDS), daemons.logs()
    assert second.results() == [((2,), 4), ((3,), 9)]
    third = commit_project(CODE, "square", [(3,), (1,)], store=store_url, queue=True)
    assert (third.name, third.state) == ("square_5", "done")  # every result was stored
    assert third.results() == [((3,), 9), ((1,), 1)]
    fresh = commit_project(CODE, "square", [(1,)], store=store_url, queue=True, reuse=False)
    assert store.reused_count(fresh.id) == 0 and fresh.state == "running"
    store.close()
