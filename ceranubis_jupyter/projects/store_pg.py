"""The project store on a PostgreSQL server (``postgresql://`` URLs), via psycopg 3.

Several users and machines then share projects: one runs a sweep, others watch it, load
its partial results, or resume it after the first client died. Every query is the shared
SQL of :class:`~ceranubis_jupyter.store.Store`; this module supplies the connection, the
DDL and the error mapping. psycopg is an optional extra (``pip install
ceranubis-jupyter[postgres]``), imported only when such a URL is opened.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, StoreError
from .conninfo import PASSWORD_ADVICE, passwords_in, redact, scrub
from .pg_binary import (
    ARRAY_PARAMETERS,
    ArrayParameter,
    argument_rows,
    outcome_arrays,
    outcome_slices,
)
from .queue_fast import INDEX_PLANS, PG_REUSABLE, FastQueue, server_left
from .queue_store import ARGUMENTS_FILLFACTOR, PG_QUEUE
from .spares import Spares
from .store import DONE_VALUES, Store

# Seconds to wait for the server when connecting: an unreachable store is reported
# quickly, a slow network still gets a chance.
CONNECT_TIMEOUT = 5
# How a connection notices a server that went silent (a partition: no FIN, no RST):
# TCP keepalives after this many idle seconds, and unacknowledged data given up after
# this many milliseconds. Shorter notices sooner; too short drops a slow but live link.
# A URL that sets these keeps its own.
TCP_OPTIONS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}
# Any constant: serializes concurrent schema creation (CREATE TABLE IF NOT EXISTS races).
_SCHEMA_LOCK_KEY = 0x63657261

_PG_DDL = (
    f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})",
    """CREATE TABLE IF NOT EXISTS projects (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL,
        code TEXT NOT NULL,
        target TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        hosts TEXT NOT NULL,
        state TEXT NOT NULL,
        client TEXT NOT NULL DEFAULT '',
        heartbeat DOUBLE PRECISION NOT NULL DEFAULT 0,
        function BYTEA,
        version INTEGER NOT NULL DEFAULT 1,
        code_hash TEXT NOT NULL DEFAULT '',
        args_hash TEXT NOT NULL DEFAULT '',
        changes TEXT NOT NULL DEFAULT '',
        UNIQUE (name, version))""",
    f"""CREATE TABLE IF NOT EXISTS arguments (
        id BIGSERIAL PRIMARY KEY,
        project BIGINT NOT NULL,
        position INTEGER NOT NULL,
        args BYTEA NOT NULL,
        result BYTEA,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled')),
        host TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        started DOUBLE PRECISION,
        finished DOUBLE PRECISION,
        error TEXT,
        output TEXT,
        result_of BIGINT) WITH (fillfactor = {ARGUMENTS_FILLFACTOR})""",
    *PG_QUEUE.arguments_storage,
    # A project's arguments in id order: every per-project read, and a queue claim.
    "CREATE INDEX IF NOT EXISTS arguments_claim ON arguments (project, id)",
)

# A store made before versions: the new columns, and names unique per version instead of
# alone (the constraint had PostgreSQL's default name).
_UPGRADE_PROJECTS = (
    "ALTER TABLE projects ADD COLUMN version INTEGER NOT NULL DEFAULT 1, "
    "ADD COLUMN code_hash TEXT NOT NULL DEFAULT '', ADD COLUMN args_hash TEXT NOT NULL "
    "DEFAULT '', ADD COLUMN changes TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE projects DROP CONSTRAINT IF EXISTS projects_name_key",
    "ALTER TABLE projects ADD CONSTRAINT projects_name_version_key UNIQUE (name, version)",
)


# A flush's finished outcomes, sent as six binary arrays (pg_binary.outcome_arrays) and
# written by one statement: no staging table, so the server stores each outcome once.
# The id range makes the planner read only the batch's span of the arguments' key,
# whatever its statistics say: without it, a store of many projects was scanned whole on
# every flush, or, when the statistics still counted few unfinished arguments, joined in
# a nested loop over the whole batch per unfinished argument (seconds a flush).
_UPDATE_FROM_ARRAYS = (
    "UPDATE arguments SET state = 'done', result = o.result, host = o.host, "
    "attempts = o.attempts, started = o.started, finished = o.finished FROM "
    "unnest(%s::bigint[], %s::bytea[], %s::text[], %s::integer[], "
    "%s::double precision[], %s::double precision[]) "
    "AS o (id, result, host, attempts, started, finished) "
    "WHERE arguments.id = o.id AND arguments.id BETWEEN %s AND %s "
    "AND arguments.state IN ('pending', 'running')"
)
# A nested loop would scan the unnested batch once per argument it joins: once psycopg
# prepares the statement, a generic plan takes the batch for 10 rows and picks one
# (54 ms for 500 outcomes, growing with the square). Hash and merge joins stay linear.
_NO_NESTED_LOOP = "SET LOCAL enable_nestloop = off"


# The oldest psycopg whose waits for notifications take a timeout (queue_listen.py).
PSYCOPG_AT_LEAST = (3, 2)


def release(version: str) -> tuple[int, ...]:
    """``(major, minor)`` of a version string such as ``3.2.10``, ``3.3.0.dev1`` or
    ``3.2rc1``."""
    parts = version.split(".")[:2]
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts)


class PostgresStore(FastQueue, Store):
    """The store in a PostgreSQL database; reconnects when the connection broke."""

    _ddl = _PG_DDL
    _queue = PG_QUEUE
    _reusable_sql = PG_REUSABLE

    def __init__(self, url: str, *, create: bool = True, keeper: Spares[Any] | None = None) -> None:
        super().__init__()
        self._create = create
        self.url = redact(url)
        self._dsn = url
        try:
            import psycopg
        except ImportError as error:
            raise StoreError(
                "a postgresql:// store needs psycopg 3: pip install 'ceranubis-jupyter[postgres]'"
            ) from error
        if release(psycopg.__version__) < PSYCOPG_AT_LEAST:
            raise StoreError(
                f"a postgresql:// store needs psycopg 3.2 or newer, not {psycopg.__version__}: "
                "pip install -U 'psycopg[binary]'"
            )
        self._psycopg: Any = psycopg
        self._width: int | None = None  # bytes of arguments.project, once read
        self._connection = self._take_spare(keeper)
        if self._connection is not None:  # its first store prepared the schema
            self.connections += 1
            return
        self._connect()
        try:
            self.prepare_schema(create)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        try:
            self._connection = self._psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                **tcp_options(self._dsn),
            )
            _send_arrays_as_they_are(self._connection, self._psycopg)
            self.connections += 1
        except self._psycopg.Error as error:
            raise StoreError(
                f"cannot reach the project store {self.url}: {self._said(error)}; check that "
                f"the server runs and the URL (user, host, port, database){self._advice()}"
            ) from None

    def _said(self, error: BaseException) -> str:
        """The first line of a server or libpq message, without any password in it."""
        return scrub(_first_line(error), self._dsn)

    def _advice(self) -> str:
        return f"; {PASSWORD_ADVICE}" if passwords_in(self._dsn) else ""

    def _cursor(self) -> Any:
        if self._connection is None or self._connection.closed or self._connection.broken:
            self._connect()
        return self._connection.cursor()

    def _lost_connection(self) -> bool:
        connection = self._connection
        return connection is None or bool(connection.closed or connection.broken)

    def reconnected_since(self, connections: int) -> bool:
        return self._lost_connection() or self.connections != connections

    def _reads(self, queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
        # In one pipeline: one round trip (each is a wake-up of the server on a busy host).
        with self._lock:
            for attempt in (1, 2):
                try:
                    cursors = [self._cursor() for _ in queries]
                    with self._connection.pipeline():
                        for cursor, (sql, params) in zip(cursors, queries, strict=True):
                            cursor.execute(self._sql(sql), params)
                    return [list(cursor.fetchall()) for cursor in cursors]
                except Exception as error:
                    if attempt == 1 and self._lost_connection():
                        continue  # reads are safe to repeat on a new connection
                    raise self._translate(error) from error
        raise AssertionError("unreachable")

    def _reads_by_index(
        self, queries: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[list[tuple[Any, ...]]]:
        # In the pipeline's one implicit transaction, after a local setting (INDEX_PLANS).
        return self._reads([(INDEX_PLANS, ()), *queries])[1:]

    def _columns(self, cursor: Any, table: str) -> set[str]:
        cursor.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
        return {str(row[0]) for row in cursor.fetchall()}

    def _add_versions(self, cursor: Any) -> None:
        for statement in _UPGRADE_PROJECTS:
            cursor.execute(statement)

    def _rollback(self, cursor: Any) -> None:
        if not (self._connection.closed or self._connection.broken):
            cursor.execute("ROLLBACK")

    def _insert_arguments(
        self, cursor: Any, project_id: int, args: Sequence[bytes]
    ) -> Sequence[int]:
        width = self._project_width(cursor)
        copy_sql = "COPY arguments (project, position, args) FROM STDIN (FORMAT BINARY)"
        with cursor.copy(copy_sql) as copy:
            for piece in argument_rows(project_id, args, width):
                copy.write(piece)
        return self._ids_in_order(cursor, project_id)

    def _project_width(self, cursor: Any) -> int:
        """Bytes of ``arguments.project`` (binary COPY needs them): 8, or 4 in a store
        made before it was a BIGINT. Read once per store."""
        if self._width is None:
            cursor.execute(
                "SELECT attlen FROM pg_attribute WHERE attrelid = 'arguments'::regclass "
                "AND attname = 'project'"
            )
            self._width = int(cursor.fetchone()[0])
        return self._width

    def _ids_in_order(self, cursor: Any, project_id: int) -> Sequence[int]:
        """The ids of a new project's arguments in position order, read in the open
        transaction (a range when they follow the positions, as COPY makes them)."""
        cursor.execute(
            "SELECT COUNT(*), MIN(id - position), MAX(id - position), MAX(position) "
            "FROM arguments WHERE project = %s",
            (project_id,),
        )
        count, low, high, last = cursor.fetchone()
        if count and low == high and last + 1 == count:
            return range(int(low), int(low) + int(count))
        cursor.execute(
            "SELECT id FROM arguments WHERE project = %s ORDER BY position", (project_id,)
        )
        return [int(id_) for (id_,) in cursor.fetchall()]

    def _mark_reused(self, cursor: Any, pairs: Sequence[tuple[int, int]]) -> None:
        # One statement over two arrays: a row per pair (executemany) cost ~0.15 ms each.
        cursor.execute(
            "UPDATE arguments a SET state = 'done', result_of = v.holder FROM "
            "(SELECT unnest(%s::bigint[]) AS id, unnest(%s::bigint[]) AS holder) v "
            "WHERE a.id = v.id AND a.state = 'pending'",
            ([arg_id for arg_id, _ in pairs], [holder for _, holder in pairs]),
        )

    def _update_done(self, cursor: Any, values: Sequence[Any]) -> int:
        # A statement over binary arrays (more only for results past STATEMENT_BYTES): the
        # server writes each outcome once (a staging table made it store every outcome
        # twice), and the client packs them in one pass.
        cursor.execute(_NO_NESTED_LOOP)  # for this transaction only
        changed = 0
        for part in outcome_slices(values):
            ids = part[::DONE_VALUES]
            cursor.execute(_UPDATE_FROM_ARRAYS, (*outcome_arrays(part), min(ids), max(ids)))
            changed += int(cursor.rowcount)
        return changed

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def _detach(self) -> Any:
        connection, self._connection = self._connection, None
        return None if connection is None or connection.closed else connection

    @staticmethod
    def _reusable(connection: Any) -> bool:
        from psycopg.pq import TransactionStatus  # imported: the connection is psycopg's

        return (
            not server_left(connection)
            and connection.info.transaction_status == TransactionStatus.IDLE
        )

    def leave_to_parent(self) -> None:
        """In a forked child: the connection's socket is the parent's session, and so
        are the spares'; point them at /dev/null, so that nothing done here (a
        finalizer's goodbye at exit) reaches those sessions. Used again, this store finds
        its connection lost and reconnects. Not under the store's lock: another thread of
        the parent may have held it at the fork, and the child has no other thread."""
        self._spares.each(_let_go)
        if self._connection is not None:
            _let_go(self._connection)

    def reopen(self) -> PostgresStore:
        """Another store on the same database, with a connection of its own: one that
        an earlier such store gave back when it closed, if any is fit (spares.py)."""
        return PostgresStore(self._dsn, create=self._create, keeper=self._spares)

    @property
    def dsn(self) -> str:
        """The connection URL as given (with any password: keep it out of messages)."""
        return self._dsn

    def _translate(self, error: Exception) -> Exception:
        if isinstance(error, (StoreError, ConfigError)):
            return error
        errors = self._psycopg.errors
        if isinstance(error, errors.UniqueViolation):
            return ConfigError("a project with this name already exists; pick another name")
        if isinstance(error, self._psycopg.OperationalError):
            return StoreError(
                f"lost the project store {self.url}: {self._said(error)}; check the server"
            )
        if isinstance(error, self._psycopg.Error):
            return StoreError(f"the project store {self.url} failed: {self._said(error)}")
        return error


def _let_go(connection: Any) -> None:
    """Point an open connection's socket at /dev/null (in a forked child)."""
    if connection.closed:
        return
    try:
        socket = connection.fileno()
    except Exception:  # broken already: no socket (psycopg.OperationalError)
        return
    nothing = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(nothing, socket)
    finally:
        os.close(nothing)


def _send_arrays_as_they_are(connection: Any, psycopg: Any) -> None:
    """Teach ``connection`` to send each :class:`ArrayParameter` as its bytes, in binary."""
    for kind, dumper in _array_dumpers(psycopg):
        connection.adapters.register_dumper(kind, dumper)


@functools.cache
def _array_dumpers(psycopg: Any) -> tuple[tuple[type, type], ...]:
    """A psycopg dumper class per :class:`ArrayParameter` kind (made once)."""
    return tuple(
        (
            kind,
            type(
                f"{kind.__name__}Dumper",
                (psycopg.adapt.Dumper,),
                {"format": psycopg.pq.Format.BINARY, "oid": kind.ARRAY_OID, "dump": _as_is},
            ),
        )
        for kind in ARRAY_PARAMETERS
    )


def _as_is(_dumper: Any, value: ArrayParameter) -> bytes:
    return value


def tcp_options(dsn: str) -> dict[str, Any]:
    """:data:`TCP_OPTIONS` that ``dsn`` does not set itself."""
    return {name: value for name, value in TCP_OPTIONS.items() if f"{name}=" not in dsn}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
