"""A small queued commit on PostgreSQL is announced before it is on disk, and is on disk
when the commit returns (``queue_fast.DURABLE_AFTER``); a daemon whose store comes back
with another project under an id it holds work of writes nothing of that work.

A server crash that loses a just-announced commit hands its ids out again; the second
test makes that state by hand (the connection cut, the project replaced under the same
ids), since a crash cannot be timed to a millisecond here.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from ceranubis_jupyter import commit_project
from ceranubis_jupyter.projects.queue_fast import DURABLE_AFTER
from tests.queue_helpers import DAEMON_SECONDS, Daemons
from tests.waiting import wait_for

GATED = """
import os, time

def gated(path):
    while not os.path.exists(path):
        time.sleep(0.01)
    return "the first project's result"
"""


def _traced_statements(url: str, tmp_path: Path) -> str:
    """What a small queued commit sends, as libpq's trace of its connection."""
    from ceranubis_jupyter.projects.stores import open_store

    store = open_store(url)
    store.init_queue()
    trace = tmp_path / "libpq.trace"
    with open(trace, "w") as out:
        store._cursor()  # its connection, made now
        store._connection.pgconn.trace(out.fileno())
        commit_project("def f(x):\n    return x\n", "f", [(1,)], store=store, queue=True)
        store._connection.pgconn.untrace()
    store.close()
    return trace.read_text(errors="replace")


def test_a_small_commit_is_announced_unflushed_then_made_durable_before_it_returns(
    pg_url: str, tmp_path: Path
) -> None:
    sent = _traced_statements(pg_url, tmp_path)
    insert = sent.index("WITH taken AS")
    assert "'synchronous_commit', 'off', true" in sent[:insert], sent[:insert][-800:]
    # After the insert's transaction: the project's row written in one of its own, which
    # the server commits only once its WAL, and the insert's before it, is on disk.
    durable = sent.index(DURABLE_AFTER, insert)
    assert "synchronous_commit" not in sent[insert:durable]
    assert sent.index("COMMIT", insert) < durable  # the insert's transaction ended first
    with psycopg.connect(pg_url) as connection:  # one probe of the key, not a scan
        plan = "\n".join(str(r[0]) for r in connection.execute("EXPLAIN " + DURABLE_AFTER))
    assert "Index Scan using projects_pkey" in plan and "Seq Scan" not in plan, plan


def test_a_daemon_writes_nothing_of_a_project_whose_id_is_another_s_when_its_store_returns(
    pg_url: str, tmp_path: Path, daemons: Daemons
) -> None:
    gate = tmp_path / "gate"
    first = commit_project(GATED, "gated", [(str(gate),)], store=pg_url, queue=True)
    daemon = daemons.start(pg_url, "d1")
    with psycopg.connect(pg_url, autocommit=True) as db:

        def running() -> bool:
            row = db.execute(
                "SELECT count(*) FROM arguments WHERE project = %s AND state = 'running'",
                (first.id,),
            ).fetchone()
            return row is not None and row[0] == 1

        wait_for(running, DAEMON_SECONDS, f"the task running:\n{daemons.logs()}")
        [(arg_id, args)] = db.execute(
            "SELECT id, args FROM arguments WHERE project = %s", (first.id,)
        ).fetchall()
        # As after a crash that lost the first commit: the daemon's connections are gone,
        # and another project has the first one's ids (not queued: no daemon claims it).
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                   "datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip
        with db.transaction():
            db.execute("DELETE FROM queue_projects WHERE project = %s", (first.id,))
            db.execute("DELETE FROM arguments WHERE project = %s", (first.id,))
            db.execute("UPDATE projects SET name = 'another', created = created + 1, "
                       "client = 'someone else' WHERE id = %s", (first.id,))  # fmt: skip
            db.execute("INSERT INTO arguments (id, project, position, args, state) "
                       "VALUES (%s, %s, 0, %s, 'pending')", (arg_id, first.id, args))  # fmt: skip
        gate.touch()  # the daemon's task ends now
        assert daemon.process.wait(DAEMON_SECONDS) == 1, daemons.logs()
        stored = db.execute(
            "SELECT state, result FROM arguments WHERE id = %s", (arg_id,)
        ).fetchone()
    assert stored == ("pending", None), daemons.logs()
    assert "not the ones it claimed" in daemon.text()
