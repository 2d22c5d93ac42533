"""Queue mode's one-round-trip paths on PostgreSQL: the commit of a small project, and
the claim of a node daemon woken by a commit.

On a loaded machine each round trip to the server costs a wake-up of the server and of
the client, so the latency from a commit to its task starting is mostly round trips:

- :meth:`FastQueue.insert_new_queued`: a queued project of at most
  :data:`AT_ONCE_ARGUMENTS` arguments is stored in one statement (the project row, its
  arguments, its queue row and the ``NOTIFY``, as data-modifying ``WITH`` parts of one
  autocommitted statement: one transaction, as before); under a default name the
  statement also picks the free name and the stored results the arguments take. Before:
  a name lookup, a reuse lookup, BEGIN, INSERT, COPY, an id check, INSERT, NOTIFY and
  COMMIT. The statement also hands the project's first arguments to one live daemon (its
  ``NOTIFY`` carries them: ``queue_events.Hand``), which then starts them unclaimed;
- :meth:`FastQueue.claim_woken`: a daemon that heard ``commit:<id> <priority> <group>``
  claims that project, and reads its function when it does not have it yet, in one
  round trip (a pipeline of plain statements) instead of a look for queued
  projects, a claim and a row read. Priorities and groups hold: it claims nothing while
  another project the daemon serves has pending arguments and comes first (a higher
  priority, or as high and committed before it), and says whether any other such
  project has work, so that the daemon then looks as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import select
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .queue_claims import PG_NOW, pg_claim
from .queue_events import SCORE_SQL, code_key
from .queue_store import CHANNEL, NODE_SILENT_SECONDS, Claimed
from .records import QUEUE_CLIENT, ProjectRow, project_row
from .store_base import PROJECT_COLUMNS, StoreBase

# The most arguments a queued commit stores in one statement (as one array parameter);
# beyond it COPY streams them cheaper than an array the server unpacks.
AT_ONCE_ARGUMENTS = 100
# A small commit hands its first arguments, at most this many (and no more than the
# daemon's workers), to the live daemon whose turn the project is, in its own
# transaction; the commit's NOTIFY carries them (queue_events.Hand), so the daemon starts
# them without claiming: one round trip less between a commit and its task's start.
HAND_MOST = 4
# The largest argument (its stored bytes) a commit hands: the NOTIFY's payload carries
# it in base64, and a payload holds at most 8,000 bytes. Larger ones are claimed.
HAND_BYTES = 1024
# The longest group a commit hands arguments for (its name is in the payload too).
HAND_GROUP_BYTES = 200

_NEW_COLUMNS = PROJECT_COLUMNS.removeprefix("id, ")
# A code digest's finished results are read from each of its projects through the
# arguments' (project, id) index: the projects in a fenced subquery (OFFSET 0), one
# LATERAL read per project, sequential scans off in the statement's transaction
# (INDEX_PLANS). Statistics taken while the store held few projects (autovacuum's ANALYZE
# lags bulk inserts by up to a minute) made the planner scan every stored argument
# instead, per commit: 14-50 ms at 61,000 rows, growing with the store.
#
# Turning sequential scans off prices a table read whole (the commit's read of the small
# nodes table, which no index could serve better) at 10^10: past the server's
# jit_above_cost, so each run of the kept plan was compiled to machine code first, 1.5 s
# a commit. These short statements never gain from that: jit is off for them.
INDEX_PLANS = "SELECT set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)"
# The one-statement commit also keeps one plan per connection (the statement prepared at
# its first use): left to choose, the server planned it anew for every commit (its
# generic plan's estimate is higher than its custom plans'), 0.5-0.9 ms each.
AT_ONCE_PLANS = INDEX_PLANS + ", set_config('plan_cache_mode', 'force_generic_plan', true)"
# The statement's transaction (BEGIN ... COMMIT inside the pipeline) does not wait for
# the disk, so its NOTIFY reaches the daemons ~0.5 ms sooner (Q2: 3.38 ms against 3.74
# in one 6-block A/B run); the commit returns only once it is on disk all the same:
# DURABLE_AFTER, in the same round trip but a transaction of its own, writes the
# project's row (a HOT update of nothing), and its synchronous commit flushes the WAL up
# to its own record, past the project's. A daemon may so start a task of a commit that
# a server crash then loses; the ids of lost rows are handed out again after such a
# crash, so a daemon checks the projects it holds work of after every reconnection
# (QueueStore.project_births) and writes nothing of one that changed.
_AT_ONCE_EARLY = AT_ONCE_PLANS + ", set_config('synchronous_commit', 'off', true)"
# (currval is volatile: called in the WHERE clause itself, it would be evaluated for
# every row of a sequential scan; as a subquery it is evaluated once, for an index probe.)
DURABLE_AFTER = (
    "UPDATE projects SET heartbeat = heartbeat "
    "WHERE id = (SELECT currval(pg_get_serial_sequence('projects', 'id')))"
)
# The executor's commit: every finished result of a digest (argument bytes, row id).
PG_REUSABLE = (
    "SELECT r.args, r.id FROM (SELECT id FROM projects WHERE code_hash = ? OFFSET 0) k "
    "CROSS JOIN LATERAL (SELECT a.args, a.id FROM arguments a WHERE a.project = k.id "
    "AND a.state = 'done' AND a.result IS NOT NULL OFFSET 0) r"
)
# Numbers after a default name's prefix that a commit probes from where this store's last
# commit under that prefix left off (one index lookup each) before it counts every name
# with the prefix (a scan that grows with them: 0.8 ms per commit at 300 names). More
# probe further before that scan when other processes take the same names meanwhile.
NAME_PROBES = 8


# Queued projects a daemon of group {group} serves (running, served by the queue) other
# than {project} that have pending arguments, looked for from each one's next_id (queue
# schema 2: no index holds the pending rows; what is pending below next_id is rare and
# found by the next ordinary claim). Read from the running projects (the
# projects_running index) and then each one's queue row: as a join, the server merged
# the running ones with every queue row the store ever had.
def _others(project: str, group: str) -> str:
    return (
        "FROM (SELECT r.id FROM projects r WHERE r.state = 'running' AND r.client = "
        f"%(client)s AND r.id <> {project} OFFSET 0) r CROSS JOIN LATERAL (SELECT o.project, "
        "o.priority, o.next_id FROM queue_projects o WHERE o.project = r.id "
        f"AND (o.node_group = '' OR o.node_group = {group})) o WHERE EXISTS (SELECT 1 "
        "FROM arguments w WHERE w.project = o.project AND w.id >= o.next_id "
        "AND w.state = 'pending')"
    )


# Of {project} (of priority %(priority)s): another project (``o``) comes first (a
# higher priority, or as high and committed before it: a smaller id).
def _first(project: str) -> str:
    return f"(o.priority > %(priority)s OR (o.priority = %(priority)s AND o.project < {project}))"


_OTHERS = _others("%(project)s", "%(group)s")
# A queued project at once: each WITH part runs once (PostgreSQL runs data-modifying
# parts whether or not they are read), in one transaction; the foreign keys are checked
# at the statement's end, when the project's row is there. Without a name, it takes the
# first free ``<prefix><n>`` from n = %(next)s (the number after this store's last one
# under the prefix; 0: none yet) among NAME_PROBES, else from n = the names taken + 1 (as
# commit.py's default name; COALESCE runs that scan only when needed); with a reuse
# digest, an argument whose bytes a finished argument of a function with that code
# digest has is done at once, pointing at that result (as rerun.py's reuse). Both
# lookups cost the same however many projects the store holds: a probe is one index
# lookup (OFFSET 0 keeps it a lookup per name: as a join, the server read every stored
# name), and a reuse lookup goes through the arguments' hash index, one per distinct
# argument, then the project of each row with those bytes (a scalar subquery, so that
# the planner cannot start from the function's projects instead: that read every one of
# their arguments, 1.4 ms a commit at 1,800 one-argument projects).
#
# With a hand head (%(hand)s not empty), ``turn`` picks the daemon the commit hands its
# first arguments to (queue_events.Hand): running, heard from within
# NODE_SILENT_SECONDS, its lease named in its nodes row, serving the project's group;
# those whose last heartbeat said they were full come last, then the best score. None
# when a project that daemon serves has pending arguments and comes first (asked of the
# one picked only: asked of each daemon, it cost a commit ~0.05 ms per daemon). The
# arguments handed (the first ``room``, each of at most HAND_BYTES) are stored running
# under that lease, their first attempt counted; ``renewed`` moves the lease's expiry to
# at least the daemon's lease length from now; the NOTIFY carries them.
INSERT_AT_ONCE = f"""WITH taken AS (
    SELECT DISTINCT name FROM projects
    WHERE %(name)s::text IS NULL AND name LIKE %(pattern)s ESCAPE '\\'),
pick AS (SELECT COALESCE(%(name)s::text, (SELECT %(prefix)s::text || n FROM generate_series(
    %(next)s::bigint, %(next)s::bigint + {NAME_PROBES - 1}) AS n WHERE %(next)s::bigint > 0
    AND NOT EXISTS (SELECT 1 FROM projects x WHERE x.name = %(prefix)s::text || n OFFSET 0)
    ORDER BY n LIMIT 1), (SELECT %(prefix)s::text || n FROM generate_series(
    (SELECT count(*) FROM taken) + 1, (SELECT count(*) FROM taken) * 2 + 1) AS n
    WHERE %(prefix)s::text || n NOT IN (SELECT name FROM taken) ORDER BY n LIMIT 1)) AS name),
p AS (INSERT INTO projects ({_NEW_COLUMNS}) SELECT pick.name, %(code)s, %(target)s,
    %(created)s, %(hosts)s, %(state)s, %(client)s, %(heartbeat)s, %(function)s, %(version)s,
    %(code_hash)s, %(args_hash)s, %(changes)s FROM pick RETURNING id, name),
known AS (SELECT t.blob AS args, r.id FROM (SELECT DISTINCT u.blob
    FROM unnest(%(args)s::bytea[]) AS u(blob) WHERE %(reuse)s::text <> '') t
    CROSS JOIN LATERAL (SELECT a.id FROM arguments a WHERE a.args = t.blob
    AND a.state = 'done' AND a.result IS NOT NULL
    AND (SELECT k.code_hash FROM projects k WHERE k.id = a.project) = %(reuse)s LIMIT 1) r),
turn AS (SELECT t.* FROM (SELECT p.id AS project, n.lease, n.name, n.lease_seconds,
    n.node_group, LEAST(n.workers, {HAND_MOST}) AS room FROM p CROSS JOIN nodes n
    WHERE %(hand)s::text <> '' AND n.state = 'running' AND n.lease > 0
    AND n.heartbeat > {PG_NOW} - {NODE_SILENT_SECONDS}
    AND (%(group)s::text = '' OR n.node_group = %(group)s::text)
    ORDER BY n.held >= n.workers, {SCORE_SQL.format(project="p.id", name="n.name")} DESC
    LIMIT 1) t
    WHERE NOT EXISTS (SELECT 1 {_others("t.project", "t.node_group")} AND {_first("t.project")})),
a AS (INSERT INTO arguments (project, position, args, state, result_of, lease, host, attempts)
    SELECT p.id, t.n - 1, t.blob, CASE WHEN known.id IS NOT NULL THEN 'done'
    WHEN h.lease IS NOT NULL THEN 'running' ELSE 'pending' END, known.id,
    CASE WHEN known.id IS NULL THEN h.lease END, CASE WHEN known.id IS NULL THEN h.name END,
    CASE WHEN known.id IS NULL AND h.lease IS NOT NULL THEN 1 ELSE 0 END
    FROM p CROSS JOIN unnest(%(args)s::bytea[]) WITH ORDINALITY AS t(blob, n)
    LEFT JOIN known ON known.args = t.blob LEFT JOIN LATERAL (SELECT turn.lease, turn.name
    FROM turn WHERE t.n <= turn.room AND length(t.blob) <= {HAND_BYTES}) h ON true
    RETURNING id, position, state, args),
renewed AS (UPDATE queue_leases l SET expires = GREATEST(l.expires, {PG_NOW} +
    turn.lease_seconds) FROM turn WHERE l.id = turn.lease
    AND EXISTS (SELECT 1 FROM a WHERE a.state = 'running')),
q AS (INSERT INTO queue_projects (project, priority, node_group, timeout)
    SELECT p.id, %(priority)s, %(group)s, %(timeout)s FROM p)
SELECT p.id, p.name, (SELECT array_agg(a.id ORDER BY a.position) FROM a),
    (SELECT count(*) FROM a WHERE a.state = 'done'),
    pg_notify(%(channel)s, 'commit:' || p.id || ' ' || %(priority)s::int || ' '
    || %(group)s::text || COALESCE((SELECT E'\\n' || min(turn.lease) || ' ' || (SELECT count(*)
    FROM a WHERE a.state = 'pending') || ' ' || %(hand)s::text || string_agg(E'\\n' || a.id
    || ' ' || translate(encode(a.args, 'base64'), E'\\n', ''), '' ORDER BY a.position)
    FROM a CROSS JOIN turn WHERE a.state = 'running'), ''))
FROM p"""

# The woken claim, statements sent together (each is planned once per connection): the
# claim, unless the project is not this daemon's (any more) or another one comes first
# (a higher priority, or as high and committed before it: a smaller id), each claimed
# row with whether other projects have work (one row of NULLs and that when nothing was
# claimed; asked in its own statement, it cost a woken claim ~0.1 ms more); then, when
# asked, the project's timeout and row (its function). The claim is the ordinary one
# (queue_claims.pg_claim: from next_id, moving it) with those conditions on the
# project's queue row.
_CLAIMED = " SELECT id, args, attempts FROM claimed"
CLAIM_WOKEN = pg_claim(
    "SELECT q.next_id FROM queue_projects q JOIN projects p ON p.id = q.project "
    "WHERE q.project = %(project)s AND p.state = 'running' AND p.client = %(client)s "
    "AND (q.node_group = '' OR q.node_group = %(group)s) "
    f"AND NOT EXISTS (SELECT 1 {_OTHERS} AND {_first('%(project)s')})"
).removesuffix(_CLAIMED) + (
    f" SELECT c.id, c.args, c.attempts, o.others FROM (SELECT EXISTS (SELECT 1 {_OTHERS}) "
    "AS others) o LEFT JOIN claimed c ON true"
)
# The claim's transaction does not wait for its WAL to reach the disk (~0.5 ms here): a
# claim lost in a server crash is harmless (its arguments are pending again; the outcome
# of whoever runs them first wins, as after an expired lease), and the next durable
# commit on the server flushes it anyway. Commits of projects and outcomes stay durable.
#
# Its statements are prepared at their first use and keep one plan per connection (a
# generic one: planning the claim costs the server more than running it), made with
# sequential scans off, as the commit's (AT_ONCE_PLANS): statistics taken while the
# store held a project or two made the plan scan every project row once per queued
# project, growing with each commit until the next ANALYZE. (How many arguments the
# plan expects a project to have: queue_schema._PG_PROJECT_SIZE.)
CLAIM_SETTINGS = (
    "SELECT set_config('synchronous_commit', 'off', true), "
    "set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true), "
    "set_config('plan_cache_mode', 'force_generic_plan', true)"
)
_WOKEN_ROW = (
    "SELECT q.timeout, "
    + ", ".join(f"p.{column}" for column in PROJECT_COLUMNS.split(", "))
    + " FROM queue_projects q JOIN projects p ON p.id = q.project WHERE q.project = %(project)s"
)


def server_left(connection: Any) -> bool:
    """Whether an idle psycopg connection is of no more use: closed, broken, or its server
    closed its end, seen without a round trip as the idle socket being readable (anything
    the server sends unasked to a session that does not listen is its goodbye, or a rare
    notice that then costs a new connection). One system call in the usual case."""
    if connection.closed or connection.broken:
        return True
    try:
        return bool(select.select([connection.fileno()], [], [], 0)[0])
    except Exception:  # no socket any more (OSError, psycopg.Error)
        return True


@dataclass(frozen=True)
class Inserted:
    """A project stored at once: its ``row``, its arguments' ``ids`` in position order,
    and how many of them took a stored result (``reused``)."""

    row: ProjectRow
    ids: list[int]
    reused: int


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
    _psycopg: Any  # the psycopg module

    def __init__(self) -> None:
        super().__init__()
        # Per default name prefix: the number after the last name a commit here took.
        self._next_numbers: dict[str, int] = {}

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
        done = self.insert_new_queued(row, None, args, queued)
        return None if done is None else (done.row.id, done.ids)

    def insert_new_queued(
        self,
        row: ProjectRow,
        prefix: str | None,
        args: Sequence[bytes],
        queued: tuple[int, str, float],
        reuse: str = "",
    ) -> Inserted | None:
        """:meth:`insert_queued_at_once`, named ``row.name`` or (with ``prefix``) the
        first free ``<prefix><n>`` (from the number after the last one this store took
        under ``prefix``, else from the count of such names + 1); with ``reuse`` (a code
        digest), the arguments whose result a function of that code already has take
        it. ``None``: too many arguments for one statement.

        Raises:
            ConfigError: another process took the name meanwhile.
            StoreError: the store refused the write.
        """
        if len(args) > AT_ONCE_ARGUMENTS or not args:
            return None
        values = {
            **{f: getattr(row, f) for f in _NEW_COLUMNS.split(", ")},
            "name": None if prefix is not None else row.name,
            "next": self._next_numbers.get(prefix, 0) if prefix is not None else 0,
            "prefix": prefix or "", "pattern": _pattern(prefix or ""), "reuse": reuse,
            "hosts": json.dumps(row.hosts), "args": list(args), "channel": CHANNEL,
            "priority": queued[0], "group": queued[1], "timeout": queued[2],
            "hand": _hand_head(row, queued),
        }  # fmt: skip
        with self._lock:
            project, name, ids, reused, _ = self._at_once(values)
            if prefix is not None:
                self._next_numbers[prefix] = int(name[len(prefix) :]) + 1
        made = dataclasses.replace(row, id=int(project), name=str(name))
        return Inserted(made, [int(i) for i in ids], int(reused))

    def _at_once(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """Run INSERT_AT_ONCE (the lock held) on a connection the server has not left."""
        self._drop_if_server_left()
        cursor, other = self._cursor(), self._cursor()
        try:
            with self._connection.pipeline():  # one round trip, two transactions
                other.execute("BEGIN")
                other.execute(_AT_ONCE_EARLY)
                cursor.execute(INSERT_AT_ONCE, values, prepare=True)
                other.execute("COMMIT")
                other.execute(DURABLE_AFTER, prepare=True)
        except Exception as error:
            with contextlib.suppress(Exception):  # a failed insert's BEGIN is still open
                self._rollback(other)
            raise self._translate(error) from error
        return tuple(cursor.fetchone())

    def _drop_if_server_left(self) -> None:
        """Close the connection when the server closed its end while it was idle (a
        restart, an administrator's terminate), so that the next statement goes out on a
        new one (:func:`server_left`). Else a commit after a restart would fail (a write
        that was sent is never sent again: it may have been committed)."""
        connection = self._connection
        if connection is None or connection.closed or connection.broken:
            return
        if server_left(connection):
            connection.close()

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
                cursor, read = self._cursor(), self._cursor()
                with self._connection.pipeline():  # one implicit transaction
                    self._cursor().execute(CLAIM_SETTINGS)
                    cursor.execute(CLAIM_WOKEN, params, prepare=True)
                    if want_row:
                        read.execute(_WOKEN_ROW, params, prepare=True)
                rows = cursor.fetchall()
                found = read.fetchone() if want_row else None
            except Exception as error:
                raise self._translate(error) from error
        claimed = [
            Claimed(int(i), project, bytes(b), int(n)) for i, b, n, _ in rows if i is not None
        ]
        row = project_row(found[1:]) if found is not None and claimed else None
        timeout = float(found[0]) if found is not None else 0.0
        return Woken(claimed, timeout, bool(rows and rows[0][3]), row)


def _hand_head(row: ProjectRow, queued: tuple[int, str, float]) -> str:
    """What a hand's payload says of the project besides its arguments (see
    queue_events.Hand): its timeout, birth and code key; ``""`` (hand nothing) when
    its group is too long for the payload."""
    if len(queued[1].encode()) > HAND_GROUP_BYTES:
        return ""
    key = code_key(row.code, row.target, row.function)
    return f"{float(queued[2])!r} {float(row.created)!r} {key}"


def _pattern(prefix: str) -> str:
    """A LIKE pattern for names starting with ``prefix`` (escape character ``\\``)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


__all__ = [
    "AT_ONCE_ARGUMENTS",
    "AT_ONCE_PLANS",
    "CLAIM_SETTINGS",
    "CLAIM_WOKEN",
    "DURABLE_AFTER",
    "HAND_BYTES",
    "HAND_MOST",
    "INDEX_PLANS",
    "INSERT_AT_ONCE",
    "PG_REUSABLE",
    "FastQueue",
    "Inserted",
    "Woken",
    "server_left",
]
