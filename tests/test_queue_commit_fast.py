"""What keeps a small queued commit fast as a store fills (``projects/queue_fast.py``'s
insert, ``projects/code.py``'s queued sources): a default name continues from the number
this store took last instead of counting every name with its prefix, and a source queued
again is not compiled, run and digested again. Names stay free and unique; a source that
fails fails every time. The shared store a commit uses: a forked child opens its own."""

from __future__ import annotations

import gc
import os
from datetime import datetime

import pytest

from ceranubis_jupyter import Project, commit_project
from ceranubis_jupyter.errors import ConfigError
from ceranubis_jupyter.projects.code import QUEUED_SOURCES, queued_function
from ceranubis_jupyter.projects.digest import function_digest
from ceranubis_jupyter.projects.queue_fast import INDEX_PLANS, INSERT_AT_ONCE, NAME_PROBES
from ceranubis_jupyter.projects.records import QUEUE_CLIENT
from ceranubis_jupyter.projects.stores import close_stores, open_store, shared_store
from tests.queue_helpers import CODE
from tests.waiting import wait_for

# Seconds a forked child may take to commit and exit.
CHILD_SECONDS = 60.0


def _commit(url: str, x: int = 1) -> str:
    return str(commit_project(CODE, "square", [(x,)], store=url, queue=True, reuse=False).name)


def _take(url: str, *names: str) -> None:
    """Names taken by another process (its own store)."""
    other = open_store(url)
    try:
        for name in names:
            other.add_project(name, CODE, "square", [], None, [b"x"], QUEUE_CLIENT)
    finally:
        other.close()


def test_default_names_go_on_from_this_stores_last_and_skip_names_taken_meanwhile(
    pg_url: str,
) -> None:
    assert [_commit(pg_url, x) for x in range(3)] == ["square_1", "square_2", "square_3"]
    _take(pg_url, "square_4", "square_5")
    assert _commit(pg_url) == "square_6"
    assert _commit(pg_url) == "square_7"


def test_a_default_name_counts_the_names_when_every_probed_number_is_taken(pg_url: str) -> None:
    assert _commit(pg_url) == "square_1"
    taken = [f"square_{n}" for n in range(2, NAME_PROBES + 2)]
    _take(pg_url, *taken, "square_40")  # the probes' numbers, and one far beyond
    # As a first commit would: from n = the names taken + 1 (here NAME_PROBES + 2).
    assert _commit(pg_url) == f"square_{NAME_PROBES + 3}"
    assert _commit(pg_url) == f"square_{NAME_PROBES + 4}"  # and on from there


def test_a_first_commit_in_a_process_counts_the_names_as_before(pg_url: str) -> None:
    _take(pg_url, "square_2", "square_9")
    assert _commit(pg_url) == "square_3"  # n from the names taken + 1: square_1 stays free


def _analyzed(url: str, params: dict[str, object]) -> str:
    import psycopg

    with psycopg.connect(url) as connection:  # one transaction, rolled back at the end
        connection.execute(INDEX_PLANS)
        rows = connection.execute("EXPLAIN (ANALYZE, COSTS OFF) " + INSERT_AT_ONCE, params)
        plan = "\n".join(str(row[0]) for row in rows.fetchall())
        connection.rollback()
    return plan


def test_a_free_probed_number_leaves_the_names_unscanned(pg_url: str) -> None:
    _commit(pg_url)  # the schema
    _take(pg_url, *(f"square_{n}" for n in range(2, 30)))
    params: dict[str, object] = {
        "code": CODE, "target": "square", "created": 0.0, "hosts": "[]", "state": "running",
        "client": QUEUE_CLIENT, "heartbeat": 0.0, "function": None, "version": 1,
        "code_hash": "h", "args_hash": "a", "changes": "", "name": None, "prefix": "square_",
        "pattern": "square\\_%", "reuse": "", "args": [b"x"], "channel": "none",
        "priority": 0, "group": "", "timeout": 0.0, "hand": "",
    }  # fmt: skip
    probed = _analyzed(pg_url, {**params, "next": 30})
    counted = _analyzed(pg_url, {**params, "next": 0})
    # The line under "CTE taken": the names with the prefix, read or never read.
    assert "rows=29 " in counted.split("CTE taken\n")[1].split("\n")[0], counted
    assert "never executed" in probed.split("CTE taken\n")[1].split("\n")[0], probed
    # Each probed number is one lookup of its name: not a join that reads every name.
    assert "Anti Join" not in probed, probed
    assert "Index Cond: (name = " in probed, probed


def test_a_source_queued_again_is_made_once() -> None:
    code = CODE + "\n# made once\n"
    fn, digest = queued_function(code, "square", "first")
    assert queued_function(code, "square", "again") == (fn, digest)
    assert digest == function_digest(fn, "square") and fn(3) == 9
    other_fn, _ = queued_function(code + "\n", "square", "other")
    assert other_fn is not fn  # another source: made on its own


def test_a_source_that_fails_fails_each_time() -> None:
    for _ in range(2):
        with pytest.raises(ConfigError, match="no function named 'nope'"):
            queued_function(CODE, "nope", "bad")
    broken = "def f(:\n"
    for _ in range(2):
        with pytest.raises(ConfigError, match="does not compile"):
            queued_function(broken, "f", "bad")


def test_queued_sources_are_bounded() -> None:
    first = queued_function(CODE + "\n# oldest\n", "square", "x")
    for n in range(QUEUED_SOURCES):
        queued_function(CODE + f"\n# {n}\n", "square", "x")
    again = queued_function(CODE + "\n# oldest\n", "square", "x")
    assert again[0] is not first[0] and again[1] == first[1]  # made anew, the same digest


def test_a_forked_child_commits_on_a_connection_of_its_own_and_leaves_the_parents_alone(
    pg_url: str,
) -> None:
    _commit(pg_url)  # the parent's shared store is open: its one session
    parent_store = shared_store(pg_url)
    sessions, forked_at = _sessions(pg_url)
    (session,) = sessions
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: commit, close its stores as its exit hook would, report
        status = 1
        try:
            os.write(write_end, str(_commit_id(pg_url, 7)).encode())
            close_stores()
            gc.collect()
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    exits: list[int] = []
    wait_for(lambda: _reaped(pid, exits), CHILD_SECONDS, "the forked child's exit")
    with os.fdopen(read_end, "rb") as reported:
        child_project = int(reported.read())
    assert exits == [0]
    assert shared_store(pg_url) is parent_store
    assert Project.load(child_project, pg_url).counts()["pending"] == 1
    assert _commit(pg_url) == "square_3"  # (the child took square_2)
    # That commit went out on the parent's session: the child's exit did not end it (its
    # last statement makes the commit durable: queue_fast.DURABLE_AFTER).
    last_query, last_start = _sessions(pg_url)[0].get(session, ("(ended)", forked_at))
    assert "UPDATE projects SET heartbeat" in last_query and last_start > forked_at


def _sessions(url: str) -> tuple[dict[int, tuple[str, datetime]], datetime]:
    """The other client sessions of the database: pid -> (last query, its start); and
    the server's time now."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid, query, query_start FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        ).fetchall()
        now = connection.execute("SELECT clock_timestamp()").fetchone()
    assert now is not None
    return {int(pid): (str(query), start) for pid, query, start in rows}, now[0]


def _commit_id(url: str, x: int) -> int:
    return int(commit_project(CODE, "square", [(x,)], store=url, queue=True, reuse=False).id)


def _reaped(pid: int, exits: list[int]) -> bool:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        exits.append(os.waitstatus_to_exitcode(status))
    return bool(done)
