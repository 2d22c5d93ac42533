"""The plan a daemon's connection keeps for its woken claim stays an index lookup once the
store holds a large finished project and its statistics say so (an ANALYZE after it):
"one project" no longer reads as half the arguments table, and no table is scanned
whole (``queue_schema._PG_PROJECT_SIZE``, ``queue_fast.CLAIM_SETTINGS``)."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
from psycopg import sql

from ceranubis_jupyter import commit_project
from ceranubis_jupyter.projects.queue_fast import CLAIM_SETTINGS, CLAIM_WOKEN
from ceranubis_jupyter.projects.records import QUEUE_CLIENT
from ceranubis_jupyter.projects.stores import open_store

LARGE = 20_000
CODE = "def inc(x):\n    return x + 1\n"


def _generic_plan(connection: psycopg.Connection[Any], params: dict[str, Any]) -> Any:
    """EXPLAIN ANALYZE of the woken claim as a kept (generic) plan, rolled back."""
    order = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", CLAIM_WOKEN)))
    numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${order.index(m.group(1)) + 1}", CLAIM_WOKEN)
    with connection.transaction(force_rollback=True):
        connection.execute(CLAIM_SETTINGS)
        connection.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        connection.execute(f"PREPARE woken AS {numbered}")
        values = sql.SQL(", ").join(sql.Literal(params[n]) for n in order)
        explain = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE woken({})").format(values)
        row = connection.execute(explain).fetchone()
        connection.execute("DEALLOCATE woken")
    assert row is not None
    return row[0][0]["Plan"]


def _nodes(plan: Any) -> list[Any]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


def test_a_woken_claim_after_a_large_project_and_an_analyze_reads_by_project(
    pg_url: str,
) -> None:
    store = open_store(pg_url)
    store.init_queue()
    store.close()
    large = commit_project(CODE, "inc", [(i,) for i in range(LARGE)], store=pg_url,
                           queue=True, reuse=False)  # fmt: skip
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("UPDATE arguments SET state = 'done' WHERE project = %s", [large.id])
        connection.execute("UPDATE projects SET state = 'done' WHERE id = %s", [large.id])
        small = commit_project(CODE, "inc", [(-1,)], store=pg_url, queue=True, reuse=False)
        connection.execute("VACUUM (ANALYZE)")
        params = {"project": int(small.id), "priority": 0, "owner": "plan#1", "host": "plan",
                  "count": 8, "lease": 30.0, "group": "", "client": QUEUE_CLIENT}  # fmt: skip
        plan = _generic_plan(connection, params)
    nodes = _nodes(plan)
    passed_over = sum(n.get("Rows Removed by Filter", 0) for n in nodes
                      if n.get("Relation Name") == "arguments")  # fmt: skip
    assert passed_over < 100, json.dumps(plan, indent=1)[:6000]
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], json.dumps(plan)[:6000]
    claimed = [n for n in nodes if n["Node Type"] == "ModifyTable" and n.get("Actual Rows")]
    assert claimed, "the plan claimed nothing"


FINISHED = 300


def test_a_woken_claim_reads_the_running_projects_not_every_finished_one(pg_url: str) -> None:
    store = open_store(pg_url)
    store.init_queue()
    store.close()
    for i in range(FINISHED):
        commit_project(CODE, "inc", [(i,)], store=pg_url, queue=True, reuse=False)
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("UPDATE arguments SET state = 'done'")
        connection.execute("UPDATE projects SET state = 'done'")
        running = [commit_project(CODE, "inc", [(-i,)], store=pg_url, queue=True, reuse=False)
                   for i in range(1, 4)]  # fmt: skip
        connection.execute("VACUUM (ANALYZE)")
        params = {"project": int(running[-1].id), "priority": 0, "owner": "plan#1",
                  "host": "plan", "count": 8, "lease": 30.0, "group": "",
                  "client": QUEUE_CLIENT}  # fmt: skip
        nodes = _nodes(_generic_plan(connection, params))
    tables = ("projects", "queue_projects")
    read = sum((n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"]
               for n in nodes if n.get("Relation Name") in tables)  # fmt: skip
    assert read < 40, f"{read} project rows read for 3 running projects of {FINISHED + 3}"
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"]
