"""Queue mode in the store: the work lives in the database and node daemons pull it.

:class:`QueueStore` is the part of :class:`~ceranubis_jupyter.projects.store.Store` that
queue mode adds (``Store`` inherits it; each back end gives its :class:`QueueDialect`):

- the schema (:meth:`QueueStore.init_queue`): a ``queue_projects`` row per queued project
  (priority, group, per-task timeout, attempts allowed), a lease (``lease_owner``,
  ``lease_expires``) on each argument, a ``nodes`` table of daemon heartbeats, and a
  ``ceranubis_meta`` row with :data:`QUEUE_SCHEMA` that daemons check;
- claiming arguments in batches (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: one
  immediate transaction holds the write lock), renewing and releasing leases, and sending
  expired ones back to the queue with an attempt counted (failed after the project's
  limit);
- heartbeats and ``NOTIFY`` (PostgreSQL) on commit, cancel and outcome batches.

Outcomes go through :meth:`Store.record_outcomes`, whose ``UPDATE`` is guarded by the
argument being pending or running: the first writer wins, a later one changes nothing.
Lease times come from the database's clock (PostgreSQL), so nodes on machines whose
clocks differ still agree on when a lease ran out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError
from .queue_events import commit_payload
from .records import QUEUE_CLIENT
from .store_base import StoreBase

# The queue schema's version: a daemon refuses a store of another (bump it when the queue
# tables or their meaning change).
QUEUE_SCHEMA = 1
# The NOTIFY channel the node daemons hear: ``commit:<id>``, ``cancel:<id>``.
CHANNEL = "ceranubis_queue"
# The NOTIFY channel of progress, for the views only (``outcome:<id>``): the daemons do
# not hear it, so a busy project's writes wake no idle daemon.
PROGRESS_CHANNEL = "ceranubis_progress"
# Seconds of silence after which a running node daemon is shown as silent (it may be
# gone): three idle heartbeats (the daemon's IDLE_BEAT_SECONDS), so a loaded host's late
# beat is not taken for a lost node.
NODE_SILENT_SECONDS = 90.0
# Attempts an argument gets (claims whose lease ran out count) before it fails.
QUEUE_ATTEMPTS = 3
# The init command the messages point at.
INIT_ADVICE = "ceranubis node --store URL --init"


@dataclass(frozen=True)
class QueueDialect:
    """What differs between the back ends' queue SQL."""

    now: str  # seconds since the epoch, as SQL
    skip_locked: str  # appended to the claim's row selection
    double: str  # a float column's type
    lease_columns: tuple[str, ...]  # DDL adding the argument lease columns
    notify: str | None  # SQL sending one notification (channel, payload), or None
    schema_lock: str | None  # serializes schema changes (SQLite: the write lock does)
    autocommits: bool  # one statement outside BEGIN is a transaction of its own


PG_QUEUE = QueueDialect(
    now="EXTRACT(EPOCH FROM clock_timestamp())::double precision",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    double="DOUBLE PRECISION",
    lease_columns=(
        "ALTER TABLE arguments ADD COLUMN IF NOT EXISTS lease_owner TEXT, "
        "ADD COLUMN IF NOT EXISTS lease_expires DOUBLE PRECISION",
    ),
    notify="SELECT pg_notify(?, ?)",
    schema_lock="SELECT pg_advisory_xact_lock(1667592801)",  # store_pg's key, as a number
    autocommits=True,
)
SQLITE_QUEUE = QueueDialect(
    now="((julianday('now') - 2440587.5) * 86400.0)",
    skip_locked="",
    double="REAL",
    lease_columns=(
        "ALTER TABLE arguments ADD COLUMN lease_owner TEXT",
        "ALTER TABLE arguments ADD COLUMN lease_expires REAL",
    ),
    notify=None,
    schema_lock=None,
    autocommits=False,  # the store's SQLite connection is not in autocommit mode
)

_NODE_COLUMNS = (
    "name, host, pid, workers, node_group, load, version, protocol, claimed, held, done, "
    "dropped, started, heartbeat, state"
)


def _queue_tables(double: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE IF NOT EXISTS ceranubis_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS queue_projects (
            project BIGINT PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
            priority INTEGER NOT NULL DEFAULT 0,
            node_group TEXT NOT NULL DEFAULT '',
            timeout {double} NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL DEFAULT {QUEUE_ATTEMPTS})""",
        f"""CREATE TABLE IF NOT EXISTS nodes (
            name TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
            workers INTEGER NOT NULL, node_group TEXT NOT NULL, load {double} NOT NULL,
            version TEXT NOT NULL, protocol INTEGER NOT NULL, claimed BIGINT NOT NULL,
            held INTEGER NOT NULL, done BIGINT NOT NULL, dropped BIGINT NOT NULL,
            started {double} NOT NULL, heartbeat {double} NOT NULL, state TEXT NOT NULL)""",
    )


# Pending arguments per project in claim order, and the leased ones: both partial, so
# they hold only the few rows that are waiting or running.
_QUEUE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS arguments_queue ON arguments (project, id) WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS arguments_leases ON arguments (lease_owner) "
    "WHERE state = 'running'",
)


def _run(cursor: Any, sql: str, params: Sequence[Any]) -> tuple[int, list[Any]]:
    if params:
        cursor.execute(sql, params)
    else:
        cursor.execute(sql)
    return int(cursor.rowcount), list(cursor.fetchall()) if cursor.description else []


@dataclass(frozen=True)
class QueuedProject:
    """A queued project a node may serve now (in the order it should)."""

    id: int
    timeout: float
    max_attempts: int


@dataclass(frozen=True)
class Claimed:
    """One argument a node holds under its lease."""

    arg_id: int
    project: int
    args: bytes
    attempts: int


@dataclass(frozen=True)
class NodeRow:
    """A node daemon's heartbeat row."""

    name: str
    host: str
    pid: int
    workers: int
    group: str
    load: float
    version: str
    protocol: int
    claimed: int  # arguments claimed since it started
    held: int  # arguments it holds now
    done: int  # outcomes it wrote
    dropped: int  # claimed arguments whose outcome another node or a cancel got first
    started: float
    heartbeat: float
    state: str


class QueueStore(StoreBase):
    """The queue's queries (see the module's docstring); ``Store`` inherits them."""

    _queue: QueueDialect

    # ------------------------------------------------------------------ schema

    def init_queue(self) -> None:
        """Create the queue's tables, columns and indexes (idempotent) and record
        :data:`QUEUE_SCHEMA`; needs the right to create tables (the store's owner)."""
        dialect = self._queue
        with self._transaction() as cursor:
            if dialect.schema_lock is not None:
                cursor.execute(dialect.schema_lock)
            for statement in _queue_tables(dialect.double):
                cursor.execute(statement)
            if "lease_owner" not in self._columns(cursor, "arguments"):
                for statement in dialect.lease_columns:
                    cursor.execute(statement)
            for statement in _QUEUE_INDEXES:
                cursor.execute(statement)
            cursor.execute(
                self._sql(
                    "INSERT INTO ceranubis_meta (key, value) VALUES ('queue_schema', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ),
                (str(QUEUE_SCHEMA),),
            )

    def queue_schema(self) -> int | None:
        """The queue schema version the store records; ``None`` without queue tables."""
        try:
            rows = self._read("SELECT value FROM ceranubis_meta WHERE key = 'queue_schema'")
        except StoreError:  # no such table (each read is its own transaction)
            return None
        return int(rows[0][0]) if rows else None

    def ensure_queue(self) -> None:
        """A queued commit's check: create the queue schema when the store has none,
        else check its version; once per store object (a schema does not go away while
        it is open, and each check costs a round trip on every commit)."""
        if getattr(self, "_queue_ready", False):
            return
        if self.queue_schema() is None:
            self.init_queue()
        else:
            self.check_queue()
        self._queue_ready = True

    def check_queue(self) -> None:
        """Raise :class:`StoreError` unless the store has this package's queue schema,
        saying what to create or upgrade."""
        found = self.queue_schema()
        if found is None:
            raise StoreError(
                f"the store {self.url} has no queue schema; create it once, as a role that "
                f"may create tables: `{INIT_ADVICE}` (a queued commit creates it too)"
            )
        if found > QUEUE_SCHEMA:
            raise StoreError(
                f"the store {self.url} has queue schema {found}, newer than this package's "
                f"{QUEUE_SCHEMA}: upgrade ceranubis_jupyter on this host "
                "(pip install -U 'ceranubis_jupyter[postgres]')"
            )
        if found < QUEUE_SCHEMA:
            raise StoreError(
                f"the store {self.url} has queue schema {found}, older than this package's "
                f"{QUEUE_SCHEMA}: upgrade the store with `{INIT_ADVICE}` (its owner), after "
                "upgrading ceranubis_jupyter on the clients"
            )

    def prepare_schema(self, create: bool) -> None:
        """At open: create (or upgrade) the project tables, or with ``create`` false
        (a node daemon, which may lack the right) check the store has the tables and the
        queue schema this package expects. A store whose tables are current is left
        as it is: a client's role then needs no right to create tables."""
        if create:
            if not self._current():
                self._create_schema()
        else:
            self.check_queue()
            self._check_schema()

    def _current(self) -> bool:
        """Whether the project tables exist with every column of this version."""
        try:
            self._check_schema()
        except StoreError:
            return False
        return True

    # ------------------------------------------------------------------ clients

    def queue_project(self, cursor: Any, project: int, priority: int, group: str,
                      timeout: float) -> None:  # fmt: skip
        """Queue a project in the open transaction (inside ``add_project``) and notify
        the nodes once it commits."""
        cursor.execute(
            self._sql(
                "INSERT INTO queue_projects (project, priority, node_group, timeout) "
                "VALUES (?, ?, ?, ?)"
            ),
            (project, priority, group, timeout),
        )
        self._notify_in(cursor, commit_payload(project, priority, group))

    def requeue(self, project: int, queued: tuple[int, str, float]) -> int:
        """Queue a stored project again (or for the first time, with ``queued``:
        priority, group, timeout): its unfinished arguments pending, its state running
        with the queue as its client; returns how many arguments are queued."""
        with self._transaction() as cursor:
            cursor.execute(
                self._sql(
                    "INSERT INTO queue_projects (project, priority, node_group, timeout) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (project) DO NOTHING"
                ),
                (project, *queued),
            )
            cursor.execute(
                self._sql(
                    "UPDATE arguments SET state = 'pending', error = NULL, lease_owner = NULL, "
                    "attempts = 0 WHERE project = ? AND state <> 'done'"
                ),
                (project,),
            )
            count = int(cursor.rowcount)
            cursor.execute(
                self._sql("UPDATE projects SET state = 'running', client = ? WHERE id = ?"),
                (QUEUE_CLIENT, project),
            )
            self._notify_in(cursor, commit_payload(project, queued[0], queued[1]))
        return count

    def is_queued(self, project: int) -> bool:
        """Whether the project is served by the queue (and not by a client)."""
        if self.queue_schema() is None:
            return False
        rows = self._read("SELECT 1 FROM queue_projects WHERE project = ?", (project,))
        return bool(rows)

    def notify(self, payload: str, channel: str = CHANNEL) -> None:
        """Send a queue event (PostgreSQL; nothing on SQLite, whose nodes poll)."""
        if self._queue.notify is not None:
            self._write(self._queue.notify, [(channel, payload)])

    def _notify_in(self, cursor: Any, payload: str, channel: str = CHANNEL) -> None:
        if self._queue.notify is not None:
            cursor.execute(self._sql(self._queue.notify), (channel, payload))

    def _statement(self, sql: str, params: Sequence[Any]) -> tuple[int, list[Any]]:
        """Run one writing statement as its own transaction: ``(rows changed, rows
        returned)``. On PostgreSQL one round trip (no BEGIN/COMMIT: the connection
        autocommits), which is what an idle node's periodic work and a claim cost.
        Without ``params`` the text is not scanned for placeholders (it quotes ``?``)."""
        if not self._queue.autocommits:
            with self._transaction() as cursor:
                return _run(cursor, self._sql(sql), params)
        with self._lock:
            try:
                return _run(self._cursor(), self._sql(sql), params)
            except Exception as error:
                raise self._translate(error) from error

    # ------------------------------------------------------------------ nodes

    def queued_projects(self, group: str) -> list[QueuedProject]:
        """Running queued projects a node of ``group`` serves: by priority, then age.

        A project with a group runs only on that group's nodes; one without runs on any.
        One a client resumed in its own process (its client is no longer the queue) is
        left to that client.
        """
        rows = self._read(
            "SELECT q.project, q.timeout, q.max_attempts FROM queue_projects q "
            "JOIN projects p ON p.id = q.project WHERE p.state = 'running' AND p.client = ? "
            "AND (q.node_group = '' OR q.node_group = ?) "
            "ORDER BY q.priority DESC, p.created, p.id",
            (QUEUE_CLIENT, group),
        )
        return [QueuedProject(int(i), float(t), int(m)) for i, t, m in rows]

    def claim_arguments(
        self, project: int, owner: str, host: str, count: int, lease: float
    ) -> list[Claimed]:
        """Claim up to ``count`` pending arguments of ``project`` under a lease of
        ``lease`` seconds; each claim counts an attempt."""
        now = self._queue.now
        sql = (
            f"UPDATE arguments SET state = 'running', lease_owner = ?, lease_expires = {now} "
            f"+ ?, host = ?, started = {now}, attempts = attempts + 1 WHERE id IN (SELECT id "
            "FROM arguments WHERE project = ? AND state = 'pending' ORDER BY id LIMIT ?"
            f"{self._queue.skip_locked}) RETURNING id, args, attempts"
        )
        _, rows = self._statement(sql, (owner, lease, host, project, count))
        return [Claimed(int(i), project, bytes(a), int(n)) for i, a, n in rows]

    def renew_leases(self, owner: str, lease: float) -> int:
        """Extend every lease ``owner`` holds by ``lease`` seconds from now."""
        changed, _ = self._statement(
            f"UPDATE arguments SET lease_expires = {self._queue.now} + ? "
            "WHERE lease_owner = ? AND state = 'running'",
            (lease, owner),
        )
        return changed

    def release(self, owner: str, arg_ids: Sequence[int] | None = None) -> int:
        """Give back arguments ``owner`` holds (all, or ``arg_ids``) without counting
        the attempt: they are pending again for any node."""
        sql = (
            "UPDATE arguments SET state = 'pending', lease_owner = NULL, "
            "attempts = attempts - 1 WHERE lease_owner = ? AND state = 'running'"
        )
        if arg_ids is None:
            return self._write(sql, [(owner,)])
        return self._write(sql + " AND id = ?", [(owner, arg_id) for arg_id in arg_ids])

    def expire_leases(self) -> list[int]:
        """Send arguments whose lease ran out back to the queue (an attempt counted),
        or fail them when their project's attempts are used up; returns the projects
        touched."""
        now, lock = self._queue.now, self._queue.skip_locked
        used_up = "attempts >= (SELECT q.max_attempts FROM queue_projects q WHERE q.project = arguments.project)"  # noqa: E501
        sql = (
            f"UPDATE arguments SET state = CASE WHEN {used_up} THEN 'failed' ELSE 'pending' "
            f"END, error = CASE WHEN {used_up} THEN 'its node was lost (lease expired) ' || "
            "attempts || ' times, last on ' || COALESCE(host, '?') ELSE NULL END, "
            "lease_owner = NULL WHERE id IN (SELECT id FROM arguments WHERE state = 'running' "
            f"AND lease_expires < {now}{lock}) RETURNING project"
        )
        _, rows = self._statement(sql, ())
        return sorted({int(row[0]) for row in rows})

    def unsettled(self) -> list[int]:
        """Queued projects still running with nothing pending or running (their last
        writer died before it set their final state)."""
        rows = self._read(
            "SELECT q.project FROM queue_projects q JOIN projects p ON p.id = q.project "
            "WHERE p.state = 'running' AND NOT EXISTS (SELECT 1 FROM arguments a WHERE "
            "a.project = q.project AND a.state IN ('pending', 'running'))"
        )
        return [int(row[0]) for row in rows]

    def settle(self, project: int, state: str) -> bool:
        """Move a running project to its final ``state`` (once: the first caller)."""
        changed = self._write(
            "UPDATE projects SET state = ? WHERE id = ? AND state = 'running'", [(state, project)]
        )
        if changed:
            self.notify(f"outcome:{project}", PROGRESS_CHANNEL)
        return changed == 1

    def stopped_projects(self, projects: Sequence[int]) -> list[int]:
        """Which of ``projects`` no longer run in the queue (cancelled, removed,
        finished, or resumed by a client in its own process)."""
        if not projects:
            return []
        marks = ", ".join("?" * len(projects))
        rows = self._read(
            f"SELECT id FROM projects WHERE id IN ({marks}) AND state = 'running' AND client = ?",
            [*projects, QUEUE_CLIENT],
        )
        running = {int(row[0]) for row in rows}
        return [p for p in projects if p not in running]

    def beat(self, node: NodeRow) -> None:
        """Insert or update a node's heartbeat row (its time is the database's)."""
        values = [getattr(node, f) for f in NodeRow.__dataclass_fields__]
        beat = len(values) - 2  # the heartbeat: the database's clock, below
        marks = ", ".join("?" * beat) + f", {self._queue.now}, ?"
        updates = ", ".join(
            f"{column} = excluded.{column}" for column in _NODE_COLUMNS.split(", ")[1:]
        )
        self._statement(
            f"INSERT INTO nodes ({_NODE_COLUMNS}) VALUES ({marks}) "
            f"ON CONFLICT (name) DO UPDATE SET {updates}",
            values[:beat] + values[beat + 1 :],
        )

    def nodes(self) -> list[NodeRow]:
        """Every node that ever beat here, by name; ``heartbeat`` as the database's
        clock had it (compare with :meth:`database_time`)."""
        rows = self._read(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY name")
        return [NodeRow(*row) for row in rows]

    def database_time(self) -> float:
        """Now, by the database's clock."""
        return float(self._read(f"SELECT {self._queue.now}")[0][0])


__all__ = [
    "CHANNEL",
    "NODE_SILENT_SECONDS",
    "PG_QUEUE",
    "PROGRESS_CHANNEL",
    "QUEUE_ATTEMPTS",
    "QUEUE_SCHEMA",
    "SQLITE_QUEUE",
    "Claimed",
    "NodeRow",
    "QueueDialect",
    "QueueStore",
    "QueuedProject",
]
