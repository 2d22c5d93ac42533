"""Queue mode's one-round-trip paths on PostgreSQL: the commit of a small project, and
the claim of a node daemon woken by a commit.

On a loaded machine each round trip to the server costs a wake-up of the server and of
the client, so the latency from a commit to its task starting is mostly round trips:

- :meth:`FastQueue.insert_queued_at_once`: a queued project of at most
  :data:`AT_ONCE_ARGUMENTS` arguments, with nothing reused, is stored in one statement
  (the project row, its arguments, its queue row and the ``NOTIFY``, as data-modifying
  ``WITH`` parts of one autocommitted statement: one transaction, as before) instead of
  BEGIN, INSERT, COPY, an id check, INSERT, NOTIFY and COMMIT;
- :meth:`FastQueue.claim_woken`: a daemon that heard ``commit:<id> <priority> <group>``
  claims that project, and reads its function when it does not have it yet, in one
  round trip (a pipeline of plain statements) instead of a look for queued
  projects, a claim and a row read. Priorities and groups hold: it claims nothing while
  another project the daemon serves has pending arguments and comes first (a higher
  priority, or as high and committed before it), and says whether any other such
  project has work, so that the daemon then looks as usual.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .queue_store import CHANNEL, PG_QUEUE, Claimed
from .records import QUEUE_CLIENT, ProjectRow, project_row
from .store_base import PROJECT_COLUMNS, StoreBase

# The most arguments a queued commit stores in one statement (as one array parameter);
# beyond it COPY streams them cheaper than an array the server unpacks.
AT_ONCE_ARGUMENTS = 100

_NEW_COLUMNS = PROJECT_COLUMNS.removeprefix("id, ")
# A queued project at once: each WITH part runs once (PostgreSQL runs data-modifying
# parts whether or not they are read), in one transaction; the foreign keys are checked
# at the statement's end, when the project's row is there.
_INSERT_AT_ONCE = f"""WITH p AS (
    INSERT INTO projects ({_NEW_COLUMNS}) VALUES
    (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id),
a AS (INSERT INTO arguments (project, position, args)
    SELECT p.id, t.n - 1, t.blob FROM p, unnest(%s::bytea[]) WITH ORDINALITY AS t(blob, n)
    RETURNING id, position),
q AS (INSERT INTO queue_projects (project, priority, node_group, timeout)
    SELECT p.id, %s, %s, %s FROM p)
SELECT p.id, (SELECT array_agg(a.id ORDER BY a.position) FROM a),
    pg_notify(%s, 'commit:' || p.id || ' ' || %s || ' ' || %s) FROM p"""

# Queued projects a daemon of group %(group)s serves (running, served by the queue)
# other than %(project)s that have pending arguments.
_OTHERS = (
    "FROM queue_projects q JOIN projects p ON p.id = q.project WHERE p.state = 'running' "
    "AND p.client = %(client)s AND (q.node_group = '' OR q.node_group = %(group)s) "
    "AND q.project <> %(project)s AND EXISTS (SELECT 1 FROM arguments w "
    "WHERE w.project = q.project AND w.state = 'pending')"
)
# The woken claim, three plain statements sent together (each plans in microseconds; one
# statement of WITH parts doing the same took a millisecond to plan): the claim, unless
# the project is not this daemon's (any more) or another one comes first (a higher
# priority, or as high and committed before it: a smaller id); whether other projects
# have work; the project's timeout and row (its function).
_CLAIM_WOKEN = (
    "UPDATE arguments SET state = 'running', lease_owner = %(owner)s, "
    f"lease_expires = {PG_QUEUE.now} + %(lease)s, host = %(host)s, "
    f"started = {PG_QUEUE.now}, attempts = attempts + 1 "
    "WHERE id IN (SELECT id FROM arguments WHERE project = %(project)s "
    "AND state = 'pending' ORDER BY id LIMIT %(count)s FOR UPDATE SKIP LOCKED) "
    "AND EXISTS (SELECT 1 FROM queue_projects q JOIN projects p ON p.id = q.project "
    "WHERE q.project = %(project)s AND p.state = 'running' AND p.client = %(client)s "
    "AND (q.node_group = '' OR q.node_group = %(group)s)) "
    f"AND NOT EXISTS (SELECT 1 {_OTHERS} AND (q.priority > %(priority)s "
    "OR (q.priority = %(priority)s AND q.project < %(project)s))) "
    "RETURNING id, args, attempts"
)
_OTHERS_WAIT = f"SELECT EXISTS (SELECT 1 {_OTHERS})"
# The claim's transaction does not wait for its WAL to reach the disk (~0.5 ms here): a
# claim lost in a server crash is harmless (its arguments are pending again; the outcome
# of whoever runs them first wins, as after an expired lease), and the next durable
# commit on the server flushes it anyway. Commits of projects and outcomes stay durable.
_CLAIM_NOT_FLUSHED = "SELECT set_config('synchronous_commit', 'off', true)"
_WOKEN_ROW = (
    "SELECT q.timeout, "
    + ", ".join(f"p.{column}" for column in PROJECT_COLUMNS.split(", "))
    + " FROM queue_projects q JOIN projects p ON p.id = q.project WHERE q.project = %(project)s"
)


@dataclass(frozen=True)
class Woken:
    """What a woken claim got: ``claimed`` (empty when the project is not the queue's,
    has nothing pending, or another project comes first); ``others``: another project
    the daemon serves has pending arguments; ``row`` and ``timeout`` (the project's
    per-task timeout): when the row was asked for and something claimed."""

    claimed: list[Claimed]
    timeout: float
    others: bool
    row: ProjectRow | None


class FastQueue(StoreBase):
    """The one-round-trip paths (see the module's docstring), for PostgreSQL."""

    _connection: Any  # the back end's psycopg connection

    def insert_queued_at_once(
        self, row: ProjectRow, args: Sequence[bytes], queued: tuple[int, str, float]
    ) -> tuple[int, list[int]] | None:
        """Store a queued project (``row``'s id is ignored) with its arguments and
        queue row, and notify the daemons, in one statement: ``(its id, the arguments'
        ids in position order)``; ``None`` when too many arguments for it.

        Raises:
            ConfigError: a project with this name and version exists.
            StoreError: the store refused the write.
        """
        if len(args) > AT_ONCE_ARGUMENTS or not args:
            return None
        values = (
            row.name, row.code, row.target, row.created, json.dumps(row.hosts), row.state,
            row.client, row.heartbeat, row.function, row.version, row.code_hash,
            row.args_hash, row.changes, list(args), *queued, CHANNEL, queued[0], queued[1],
        )  # fmt: skip
        with self._lock:
            try:
                cursor = self._cursor()
                cursor.execute(_INSERT_AT_ONCE, values)
                project, ids, _ = cursor.fetchone()
            except Exception as error:
                raise self._translate(error) from error
        return int(project), [int(i) for i in ids]

    def claim_woken(
        self, project: int, priority: int, owner: str, host: str, count: int, lease: float,
        group: str, want_row: bool,
    ) -> Woken:  # fmt: skip
        """Claim up to ``count`` pending arguments of ``project`` (of ``priority``, as its
        commit said) under a lease, unless another project a node of ``group`` serves
        comes first; with ``want_row``, read the project's row too (its function). One
        round trip."""
        params = {
            "project": project, "priority": priority, "owner": owner, "host": host,
            "count": count, "lease": lease, "group": group, "client": QUEUE_CLIENT,
        }  # fmt: skip
        with self._lock:
            try:
                cursor, others, read = self._cursor(), self._cursor(), self._cursor()
                with self._connection.pipeline():  # one implicit transaction
                    self._cursor().execute(_CLAIM_NOT_FLUSHED)
                    cursor.execute(_CLAIM_WOKEN, params)
                    others.execute(_OTHERS_WAIT, params)
                    if want_row:
                        read.execute(_WOKEN_ROW, params)
                rows, waiting = cursor.fetchall(), others.fetchone()
                found = read.fetchone() if want_row else None
            except Exception as error:
                raise self._translate(error) from error
        claimed = [Claimed(int(i), project, bytes(b), int(n)) for i, b, n in rows]
        row = project_row(found[1:]) if found is not None and claimed else None
        timeout = float(found[0]) if found is not None else 0.0
        return Woken(claimed, timeout, bool(waiting and waiting[0]), row)


__all__ = ["AT_ONCE_ARGUMENTS", "FastQueue", "Woken"]
