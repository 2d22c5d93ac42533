"""The reuse lookup on PostgreSQL reads only its digest's projects, whatever the statistics.

Statistics taken while the store was small (autovacuum's ANALYZE lags a bulk insert) made
the planner scan every stored argument for each commit with reuse on. These tests make
such statistics on purpose and check the plans of the statements the store sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ceranubis_jupyter.projects.queue_fast import (
    AT_ONCE_PLANS,
    INDEX_PLANS,
    INSERT_AT_ONCE,
    PG_REUSABLE,
)
from ceranubis_jupyter.projects.store import Store
from ceranubis_jupyter.projects.stores import open_store

# Arguments of the other projects, inserted after the statistics were taken.
LATER_ARGUMENTS = 30_000

_PROJECT = (
    "INSERT INTO projects (name, code, target, created, hosts, state, code_hash) "
    "VALUES (%s, '', 'f', 0, '[]', 'done', %s) RETURNING id"
)
_ARGUMENTS = (
    "INSERT INTO arguments (project, position, args, state, result) SELECT %s, n, "
    "int4send(n), 'done', '\\x00' FROM generate_series(0, %s - 1) AS n"
)


@pytest.fixture
def stale_store(pg_url: str) -> Iterator[Store]:
    """A store analyzed while it held one small project, then given many more rows."""
    store = open_store(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as connection:
        mine = connection.execute(_PROJECT, ("mine", "digest-mine")).fetchone()
        assert mine is not None
        connection.execute(_ARGUMENTS, (mine[0], 10))
        connection.execute("ANALYZE projects")
        connection.execute("ANALYZE arguments")
        connection.execute("ALTER TABLE arguments SET (autovacuum_enabled = false)")
        other = connection.execute(_PROJECT, ("other", "digest-other")).fetchone()
        assert other is not None
        connection.execute(_ARGUMENTS, (other[0], LATER_ARGUMENTS))
    try:
        yield store
    finally:
        store.close()


def _plan(url: str, sql: str, params: Any) -> str:
    with psycopg.connect(url) as connection:  # one transaction, as the store's pipeline
        connection.execute(INDEX_PLANS)
        rows = connection.execute("EXPLAIN " + sql, params).fetchall()
    return "\n".join(str(row[0]) for row in rows)


def test_the_executors_reuse_read_goes_through_the_projects_index(
    stale_store: Store, pg_url: str
) -> None:
    plan = _plan(pg_url, PG_REUSABLE.replace("?", "%s"), ("digest-mine",))
    assert "Seq Scan on arguments" not in plan, plan
    assert "Index Cond: (project = " in plan, plan  # a probe per project, not a walk
    assert {bytes(a) for a in stale_store.reusable("digest-mine")} == {
        n.to_bytes(4, "big") for n in range(10)
    }


def _at_once_params() -> dict[str, object]:
    return {
        "name": "new", "next": 0, "prefix": "", "pattern": "%", "reuse": "digest-mine",
        "code": "", "target": "f", "created": 0.0, "hosts": "[]", "state": "running",
        "client": "q", "heartbeat": 0.0, "function": None, "version": 1,
        "code_hash": "digest-mine", "args_hash": "", "changes": "",
        "args": [(1).to_bytes(4, "big")], "channel": "c", "priority": 0, "group": "",
        "timeout": 0.0, "hand": "",
    }  # fmt: skip


def _looks_up_each_argument(plan: str) -> None:
    """The reuse part reads the arguments' hash index per argument, then each match's
    project by its key: never the function's projects one by one, nor a scan. (The
    commit's hand reads other projects' pending arguments by project: not looked at.)"""
    if "  CTE turn\n" in plan:
        plan = plan[: plan.index("  CTE turn\n")] + plan[plan.index("  CTE a\n") :]
    assert "Seq Scan on arguments" not in plan, plan
    assert "using arguments_args on arguments" in plan, plan
    assert "Index Cond: (args = u.blob)" in plan, plan
    assert "Index Cond: (project = " not in plan, plan
    assert "projects_code_hash" not in plan, plan


def test_the_queued_commits_reuse_part_looks_up_each_argument(
    stale_store: Store, pg_url: str
) -> None:
    stale_store.init_queue()  # the queue's tables (and no new statistics)
    _looks_up_each_argument(_plan(pg_url, INSERT_AT_ONCE, _at_once_params()))


def test_the_queued_commits_kept_plan_looks_up_each_argument(
    stale_store: Store, pg_url: str
) -> None:
    # As the store runs it: prepared, its one generic plan kept (seen by auto_explain).
    stale_store.init_queue()
    logged: list[str] = []
    with psycopg.connect(pg_url) as connection:
        connection.add_notice_handler(lambda notice: logged.append(notice.message_primary))
        connection.execute("LOAD 'auto_explain'")
        connection.execute("SET auto_explain.log_min_duration = 0")
        connection.execute("SET client_min_messages = log")
        connection.execute(AT_ONCE_PLANS)
        connection.execute(INSERT_AT_ONCE, _at_once_params(), prepare=True)
        connection.rollback()
    text = next(text for text in logged if "Insert on projects" in text)
    plan = text[text.index("(cost=") :]  # after the query's text
    assert "One-Time Filter: ($1 IS NULL)" in plan, plan  # generic: planned without values
    assert "JIT:" not in plan, plan  # compiled first, it took 1.5 s a commit
    _looks_up_each_argument(plan)
