"""Queue mode in the store: the work lives in the database and node daemons pull it.

:class:`QueueStore` is the part of :class:`~ceranubis_jupyter.projects.store.Store` that
queue mode adds (``Store`` inherits it; each back end gives its :class:`QueueDialect`):

- the schema (:meth:`QueueStore.init_queue`): a ``queue_projects`` row per queued project
  (priority, group, per-task timeout, attempts allowed, where its claims start), a
  ``queue_leases`` row per daemon (owner, host, expiry) that each claimed argument names
  (``arguments.lease``), a ``nodes`` table of daemon heartbeats, and a ``ceranubis_meta``
  row with :data:`QUEUE_SCHEMA` that daemons check;
- claiming arguments in batches (a range of ids from the project's ``next_id``, the
  project's claims taking turns on its row), renewing and releasing leases, and sending
  expired ones back to the queue with an attempt counted (failed after the project's
  limit): :mod:`.queue_claims`, which ``QueueStore`` inherits;
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
from .queue_claims import Claimed, QueueClaims, QueueDialect
from .queue_events import commit_payload
from .queue_schema import (
    ARGUMENTS_FILLFACTOR,
    CLAIM_COLUMNS,
    LEASES_FROM_SCHEMA_2,
    NODE_COLUMNS,
    NODE_COLUMNS_ADDED,
    PG_QUEUE,
    QUEUE_ATTEMPTS,
    QUEUE_INDEXES,
    SQLITE_QUEUE,
    queue_tables,
)
from .records import QUEUE_CLIENT

# The queue schema's version: a daemon refuses a store of another (bump it when the queue
# tables or their meaning change). 2: claims start at queue_projects.next_id, and no
# index names a column that a claim or an outcome changes. 3: one lease row per daemon
# (queue_leases), named by the arguments it holds (arguments.lease). 4 (PostgreSQL):
# the arguments' bytes hashed (arguments_args), which a small commit's reuse reads.
QUEUE_SCHEMA = 4
# The NOTIFY channel the node daemons hear: ``commit:<id>``, ``cancel:<id>``.
CHANNEL = "ceranubis_queue"
# The NOTIFY channel of progress, for the views only (``outcome:<id>``): the daemons do
# not hear it, so a busy project's writes wake no idle daemon.
PROGRESS_CHANNEL = "ceranubis_progress"
# Seconds of silence after which a running node daemon is shown as silent (it may be
# gone): three idle heartbeats (the daemon's IDLE_BEAT_SECONDS), so a loaded host's late
# beat is not taken for a lost node.
NODE_SILENT_SECONDS = 90.0
# The init command the messages point at.
INIT_ADVICE = "ceranubis node --store URL --init"


@dataclass(frozen=True)
class QueuedProject:
    """A queued project a node may serve now (in the order it should)."""

    id: int
    timeout: float
    max_attempts: int


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
    lease: int = 0  # its lease row's id, which commits hand arguments under (0: none)
    lease_seconds: float = 0.0  # how long its lease lasts unrenewed


class QueueStore(QueueClaims):
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
            for statement in queue_tables(dialect.double, dialect.serial):
                cursor.execute(statement)
            columns = self._columns(cursor, "arguments")
            if "lease" not in columns:
                for statement in dialect.lease_columns:
                    cursor.execute(statement)
            if "lease_owner" in columns:  # a schema 2 store: its leases, as rows
                for statement in LEASES_FROM_SCHEMA_2:
                    cursor.execute(statement)
            for table, added in (
                ("queue_projects", CLAIM_COLUMNS),
                ("nodes", NODE_COLUMNS_ADDED),
            ):
                present = self._columns(cursor, table)
                for column, statement in added.items():
                    if column not in present:
                        cursor.execute(statement)
            for statement in (*dialect.arguments_storage, *QUEUE_INDEXES, *dialect.queue_only):
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
        if found < QUEUE_SCHEMA or not self._nodes_name_leases():
            raise StoreError(
                f"the store {self.url} has queue schema {found}, older than this package's "
                f"{QUEUE_SCHEMA}: upgrade the store with `{INIT_ADVICE}` (its owner), after "
                "upgrading ceranubis_jupyter on the clients"
            )

    def _nodes_name_leases(self) -> bool:
        """Whether the nodes table has its lease columns (schema 4 stores made before
        commits handed arguments lack them)."""
        try:
            self._read(f"SELECT {', '.join(NODE_COLUMNS_ADDED)} FROM nodes LIMIT 0")
        except StoreError:
            return False
        return True

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
            # The queue row first, as a claim locks it first (no deadlock with one).
            cursor.execute(
                self._sql(
                    "UPDATE queue_projects SET next_id = 0, lowered = lowered + 1 WHERE project = ?"
                ),
                (project,),
            )
            cursor.execute(
                self._sql(
                    "UPDATE arguments SET state = 'pending', error = NULL, lease = NULL, "
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

    def project_births(self, projects: Sequence[int]) -> dict[int, float]:
        """When each of ``projects`` that the store has was committed (its ``created``):
        with its id, what tells one project from another given the same id later."""
        if not projects:
            return {}
        marks = ", ".join("?" * len(projects))
        rows = self._read(f"SELECT id, created FROM projects WHERE id IN ({marks})", projects)
        return {int(row[0]): float(row[1]) for row in rows}

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
        fields = list(NodeRow.__dataclass_fields__)
        values = [getattr(node, f) for f in fields]
        beat = fields.index("heartbeat")  # the database's clock, below
        marks = ", ".join(["?"] * beat + [self._queue.now] + ["?"] * (len(values) - beat - 1))
        updates = ", ".join(
            f"{column} = excluded.{column}" for column in NODE_COLUMNS.split(", ")[1:]
        )
        self._statement(
            f"INSERT INTO nodes ({NODE_COLUMNS}) VALUES ({marks}) "
            f"ON CONFLICT (name) DO UPDATE SET {updates}",
            values[:beat] + values[beat + 1 :],
        )

    def nodes(self) -> list[NodeRow]:
        """Every node that ever beat here, by name; ``heartbeat`` as the database's
        clock had it (compare with :meth:`database_time`)."""
        rows = self._read(f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY name")
        return [NodeRow(*row) for row in rows]

    def database_time(self) -> float:
        """Now, by the database's clock."""
        return float(self._read(f"SELECT {self._queue.now}")[0][0])


__all__ = [
    "ARGUMENTS_FILLFACTOR",
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
