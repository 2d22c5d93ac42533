"""Queue mode's schema: the queue tables, their indexes and storage settings per back
end (:class:`~.queue_claims.QueueDialect`), and what an older store lacks (run by
``QueueStore.init_queue``).
"""

from __future__ import annotations

from .queue_claims import PG_NOW, QueueDialect

# Attempts an argument gets (claims whose lease ran out count) before it fails.
QUEUE_ATTEMPTS = 3


# Percent of each arguments page a COPY fills, the rest kept for the updated version of
# its rows: an outcome's UPDATE (and a queue claim's) then stays on the page, a HOT
# update that writes no index entry (measured, batches of 2,000: the outcome's server CPU
# per row 14-15 us at 100, 10-11.5 at 60, 6.5-10.5 at 50). At 50 a row with a small
# result outgrew its page for the last quarter of each page's rows (W1: 76 % of updates
# HOT, 207 bytes of WAL per result); at 40 all of them are HOT (127 bytes of WAL, server
# CPU per result 8.5-9.0 -> 7.0-8.0 us). Results over ~100 bytes still leave the page
# for some rows. Lower makes more updates HOT; a freshly committed project's pages take
# 100/N times the space until its outcomes fill them.
ARGUMENTS_FILLFACTOR = 40
# The arguments table's storage, also for stores made before it (run when the project
# tables are created or upgraded, and by init_queue): the fillfactor, and no foreign key
# to projects (its check is one query per inserted row, ~10 us of server CPU
# per argument of a commit; the store's own code is the only writer, inserts a project's
# arguments in the transaction that inserts the project, and deletes them before it).
_PG_ARGUMENTS_STORAGE = (
    f"ALTER TABLE arguments SET (fillfactor = {ARGUMENTS_FILLFACTOR})",
    "ALTER TABLE arguments DROP CONSTRAINT IF EXISTS arguments_project_fkey",
)
# Arguments by their bytes, in a queue store on PostgreSQL: a small queued commit finds
# the stored results it can take in a lookup per argument, however many projects the
# function already has (queue_fast.INSERT_AT_ONCE); without it, it read every argument
# of each of them. A hash index holds a 4-byte code per row whatever the arguments'
# size; it costs ~1 us of server CPU per stored argument (W1 as a project: 0.71 of
# `map` with it, 0.76 without, in one A/B run), so only queue stores have it.
_PG_REUSE_INDEX = "CREATE INDEX IF NOT EXISTS arguments_args ON arguments USING hash (args)"
# The planner's guess of how many arguments one project has, for the plans a connection
# keeps (generic: made before the project id is known): about 20 (n_distinct -0.05,
# distinct projects = 5 % of the rows). Left to ANALYZE, a store with a few large
# projects gets n_distinct 2 or 3, "one project" reads as half the table, and a woken
# claim of a 1-argument project walked the primary key through every stored argument
# from its next id, three times (each other project's pending check too): 2.4 ms a
# claim at 20,000 stored arguments, growing with them. A plan of a known large project
# still follows its own statistics.
_PG_PROJECT_SIZE = "ALTER TABLE arguments ALTER COLUMN project SET (n_distinct = -0.05)"

PG_QUEUE = QueueDialect(
    now=PG_NOW,
    skip_locked=" FOR UPDATE SKIP LOCKED",
    double="DOUBLE PRECISION",
    serial="BIGSERIAL PRIMARY KEY",
    lease_columns=("ALTER TABLE arguments ADD COLUMN IF NOT EXISTS lease BIGINT",),
    notify="SELECT pg_notify(?, ?)",
    schema_lock="SELECT pg_advisory_xact_lock(1667592801)",  # store_pg's key, as a number
    autocommits=True,
    greatest="GREATEST",
    least="LEAST",
    arguments_storage=_PG_ARGUMENTS_STORAGE,
    row_lock="SELECT 1 FROM queue_projects WHERE project = ? FOR NO KEY UPDATE",
    queue_only=(_PG_REUSE_INDEX, _PG_PROJECT_SIZE),
)
SQLITE_QUEUE = QueueDialect(
    now="((julianday('now') - 2440587.5) * 86400.0)",
    skip_locked="",
    double="REAL",
    serial="INTEGER PRIMARY KEY AUTOINCREMENT",
    lease_columns=("ALTER TABLE arguments ADD COLUMN lease INTEGER",),
    notify=None,
    schema_lock=None,
    autocommits=False,  # the store's SQLite connection is not in autocommit mode
    greatest="MAX",
    least="MIN",
    arguments_storage=(),
    row_lock=None,
    queue_only=(),
)

NODE_COLUMNS = (
    "name, host, pid, workers, node_group, load, version, protocol, claimed, held, done, "
    "dropped, started, heartbeat, state, lease, lease_seconds"
)


def queue_tables(double: str, serial: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE IF NOT EXISTS ceranubis_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS queue_projects (
            project BIGINT PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
            priority INTEGER NOT NULL DEFAULT 0,
            node_group TEXT NOT NULL DEFAULT '',
            timeout {double} NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL DEFAULT {QUEUE_ATTEMPTS},
            next_id BIGINT NOT NULL DEFAULT 0,
            lowered BIGINT NOT NULL DEFAULT 0,
            rewound {double} NOT NULL DEFAULT 0)""",
        f"""CREATE TABLE IF NOT EXISTS nodes (
            name TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
            workers INTEGER NOT NULL, node_group TEXT NOT NULL, load {double} NOT NULL,
            version TEXT NOT NULL, protocol INTEGER NOT NULL, claimed BIGINT NOT NULL,
            held INTEGER NOT NULL, done BIGINT NOT NULL, dropped BIGINT NOT NULL,
            started {double} NOT NULL, heartbeat {double} NOT NULL, state TEXT NOT NULL,
            lease BIGINT NOT NULL DEFAULT 0, lease_seconds {double} NOT NULL DEFAULT 0)""",
        f"""CREATE TABLE IF NOT EXISTS queue_leases (
            id {serial}, owner TEXT NOT NULL UNIQUE, host TEXT NOT NULL,
            expires {double} NOT NULL)""",
    )


# Arguments per project in claim order. No index names (in its key or a predicate) a
# column that a claim, a renewal or an outcome changes, so on PostgreSQL those updates
# are HOT: the new row version stays on its page and no index gets an entry (schema 1's
# partial indexes on ``state`` made each of them write into every index). A claim finds
# its rows from the project's ``next_id`` instead of an index of pending rows.
QUEUE_INDEXES = (
    "DROP INDEX IF EXISTS arguments_queue",
    "DROP INDEX IF EXISTS arguments_leases",
    "CREATE INDEX IF NOT EXISTS arguments_claim ON arguments (project, id)",
    # Stores made before it: (project) alone, which arguments_claim covers; one index
    # entry less per inserted argument.
    "DROP INDEX IF EXISTS arguments_project",
    # The running projects, the few among all those ever committed: the looks for work
    # and each woken claim start from them (a project's state changes twice in its life,
    # its heartbeat's updates stay HOT). Without it they read every queued project the
    # store ever had: a woken claim took 2.1 ms instead of 1.2 at 1,500 finished ones.
    "CREATE INDEX IF NOT EXISTS projects_running ON projects (id) WHERE state = 'running'",
)
# Schema 2 stores (an owner and an expiry on each argument): a lease row per owner that
# holds arguments, named by them (run by init_queue; stop the daemons of schema 2 first).
LEASES_FROM_SCHEMA_2 = (
    "INSERT INTO queue_leases (owner, host, expires) SELECT lease_owner, "
    "COALESCE(MAX(host), ''), COALESCE(MAX(lease_expires), 0) FROM arguments WHERE state = "
    "'running' AND lease_owner IS NOT NULL AND lease IS NULL GROUP BY lease_owner "
    "ON CONFLICT (owner) DO NOTHING",
    "UPDATE arguments SET lease = (SELECT l.id FROM queue_leases l WHERE l.owner = "
    "arguments.lease_owner) WHERE state = 'running' AND lease_owner IS NOT NULL AND lease "
    "IS NULL",
)
# Schema 1 stores: the claim's starting point (0: from the first argument), and how many
# times it was moved back (a claim moves it forward only if that did not change since
# the claim read it, so it never undoes a move back it did not see).
CLAIM_COLUMNS = {
    "next_id": "ALTER TABLE queue_projects ADD COLUMN next_id BIGINT NOT NULL DEFAULT 0",
    "lowered": "ALTER TABLE queue_projects ADD COLUMN lowered BIGINT NOT NULL DEFAULT 0",
    # Schema 2 stores: when a node last looked below next_id (queue schema 3).
    "rewound": "ALTER TABLE queue_projects ADD COLUMN rewound DOUBLE PRECISION NOT NULL DEFAULT 0",
}

# Stores made before commits handed arguments (earlier schema 4 ones): the lease a node
# row names, and how long it lasts.
NODE_COLUMNS_ADDED = {
    "lease": "ALTER TABLE nodes ADD COLUMN lease BIGINT NOT NULL DEFAULT 0",
    "lease_seconds": "ALTER TABLE nodes ADD COLUMN lease_seconds DOUBLE PRECISION NOT NULL "
    "DEFAULT 0",
}


__all__ = [
    "ARGUMENTS_FILLFACTOR",
    "CLAIM_COLUMNS",
    "LEASES_FROM_SCHEMA_2",
    "NODE_COLUMNS",
    "NODE_COLUMNS_ADDED",
    "PG_QUEUE",
    "QUEUE_ATTEMPTS",
    "QUEUE_INDEXES",
    "SQLITE_QUEUE",
    "queue_tables",
]
