"""The plumbing under the project store: back-end hooks, transactions, the schema.

:class:`StoreBase` is what :class:`~ceranubis_jupyter.projects.store.Store` (the queries)
stands on and what each back end (``store_sqlite.py``, ``store_pg.py``) fills in: a DB-API
connection, the DDL, the error mapping and the bulk writes. Opening a store creates its
tables, or upgrades those of an earlier version of the package in place (every row kept).
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import StoreError
from .spares import Spares

# The columns of a project store before versions: a table with these (and no version)
# is upgraded at open; any other shape is refused.
V1_PROJECT_COLUMNS = "id, name, code, target, created, hosts, state, client, heartbeat, function"
PROJECT_COLUMNS = f"{V1_PROJECT_COLUMNS}, version, code_hash, args_hash, changes"
ARGUMENT_COLUMNS = (
    "id, position, args, result, state, host, attempts, started, finished, error, output"
)
# Indexes of both back ends, made once the columns exist (after an upgrade): finding a
# function's finished results by its digest, and the rows that reuse a result.
INDEXES = (
    "CREATE INDEX IF NOT EXISTS projects_code_hash ON projects (code_hash)",
    "CREATE INDEX IF NOT EXISTS arguments_result_of ON arguments (result_of) "
    "WHERE result_of IS NOT NULL",
)


class StoreBase(ABC):
    """The plumbing of :class:`~ceranubis_jupyter.projects.store.Store`: its back-end
    hooks, transactions, reads and writes, and creating (or upgrading) the tables."""

    url: str
    _ddl: Sequence[str]
    # How a write transaction starts (SQLite takes its write lock at once: no upgrades).
    _begin_sql = "BEGIN"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        # Connections made to the server so far (PostgreSQL: one more after each loss).
        self.connections = 0
        # Connections given back by the stores reopened from this one (spares.py) ...
        self._spares: Spares[Any] = Spares(type(self)._reusable, _close)  # no cycle
        # ... and, in such a store, the spares of the store it was reopened from.
        self._keeper: Spares[Any] | None = None

    def reconnected_since(self, connections: int) -> bool:
        """Whether the store's connection may not be the one it had when
        :attr:`connections` was ``connections`` (PostgreSQL: made anew, or lost and not
        made again yet); a file store keeps its one connection."""
        return self.connections != connections

    # ------------------------------------------------------------------ back-end hooks

    @abstractmethod
    def _cursor(self) -> Any:
        """A DB-API cursor on this store's connection."""

    @abstractmethod
    def _rollback(self, cursor: Any) -> None:
        """Roll back the open transaction, if the connection still has one."""

    @abstractmethod
    def _translate(self, error: Exception) -> Exception:
        """A :class:`StoreError` or :class:`ConfigError` for a driver error (or ``error``)."""

    def close(self) -> None:
        """Close the connection and this store's spares. A store made by ``reopen()``
        gives its connection, when idle and sound, back to the store it was reopened
        from, whose next ``reopen()`` takes it (spares.py)."""
        with self._lock:
            connection = self._detach()
        self._spares.close()
        if connection is None or (self._keeper is not None and self._keeper.give(connection)):
            return
        connection.close()

    def _take_spare(self, keeper: Spares[Any] | None) -> Any:
        """A connection ``keeper`` kept (then it is this store's keeper), or ``None``."""
        self._keeper = keeper
        return keeper.take() if keeper is not None else None

    @abstractmethod
    def _detach(self) -> Any:
        """The store's connection (``None``: none), leaving the store as closed."""

    @staticmethod
    @abstractmethod
    def _reusable(connection: Any) -> bool:
        """Whether ``connection`` may serve another store: open, sound, no transaction
        open, nothing unread on it."""

    def leave_to_parent(self) -> None:
        """In a child forked while this store was open: make sure nothing the child does
        with it reaches the parent's connection (the child opens stores of its own)."""
        return  # a file (SQLite): the child leaves it unclosed, and that is enough

    @abstractmethod
    def _insert_arguments(
        self, cursor: Any, project_id: int, args: Sequence[bytes]
    ) -> Sequence[int]:
        """Insert the arguments (in position order) of a new project in the open
        transaction; returns their ids (back ends may bulk-load, or read the ids back)."""

    @abstractmethod
    def _update_done(self, cursor: Any, values: Sequence[Any]) -> int:
        """Record ``id, result, host, attempts, started, finished`` (flat, six values per
        argument) of finished arguments still open; returns how many changed (back ends
        may bulk-load)."""

    def _sql(self, text: str) -> str:
        return text

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            cursor = self._cursor()
            try:
                cursor.execute(self._begin_sql)
                yield cursor
                cursor.execute("COMMIT")
            except BaseException as error:
                with contextlib.suppress(Exception):
                    self._rollback(cursor)
                if isinstance(error, Exception):
                    raise self._translate(error) from error
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            for attempt in (1, 2):
                try:
                    cursor = self._cursor()
                    cursor.execute(self._sql(sql), params)
                    return list(cursor.fetchall())
                except Exception as error:
                    if attempt == 1 and self._lost_connection():
                        continue  # a read is safe to repeat on a new connection
                    raise self._translate(error) from error
        raise AssertionError("unreachable")

    def _reads(self, queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
        """The rows of several reads (back ends may send them in one round trip)."""
        return [self._read(sql, params) for sql, params in queries]

    def _reads_by_index(
        self, queries: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[list[tuple[Any, ...]]]:
        """:meth:`_reads` planned to reach their rows through indexes, whatever the
        tables' statistics say (a back end that plans by statistics overrides it)."""
        return self._reads(queries)

    def _lost_connection(self) -> bool:
        """True when the connection broke (the next :meth:`_cursor` makes a new one)."""
        return False

    def _write(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run ``sql`` once per row in one transaction; returns the rows changed."""
        if not rows:
            return 0
        with self._transaction() as cursor:
            cursor.executemany(self._sql(sql), rows)
            return int(cursor.rowcount)

    def _create_schema(self) -> None:
        """Create the tables, or upgrade those of an earlier store, in one transaction
        (another process opening the store at the same time waits, then finds it done)."""
        with self._transaction() as cursor:
            for statement in self._ddl:
                cursor.execute(statement)
            columns = self._columns(cursor, "projects")
            if "version" not in columns and set(V1_PROJECT_COLUMNS.split(", ")) <= columns:
                self._add_versions(cursor)
            if "result_of" not in self._columns(cursor, "arguments"):
                cursor.execute("ALTER TABLE arguments ADD COLUMN result_of BIGINT")
            if {"version", "code_hash"} <= self._columns(cursor, "projects"):
                for statement in INDEXES:
                    cursor.execute(statement)
        self._check_schema()

    @abstractmethod
    def _columns(self, cursor: Any, table: str) -> set[str]:
        """The names of ``table``'s columns, read in the open transaction."""

    @abstractmethod
    def _add_versions(self, cursor: Any) -> None:
        """Upgrade a store made before versions: add the projects' ``version``,
        ``code_hash``, ``args_hash`` and ``changes`` columns (1, '', '', '') and make names
        unique per version, in the open transaction; every row is kept."""

    def _check_schema(self) -> None:
        try:
            self._read(f"SELECT {PROJECT_COLUMNS} FROM projects WHERE 1 = 0")
            self._read(f"SELECT {ARGUMENT_COLUMNS}, project, result_of FROM arguments WHERE 1 = 0")
        except StoreError as error:
            raise StoreError(
                f"the project store {self.url} has tables of another shape ({error}); "
                "point CERANUBIS_STORE at a new file or database"
            ) from error


def _close(connection: Any) -> None:
    connection.close()


__all__ = ["ARGUMENT_COLUMNS", "INDEXES", "PROJECT_COLUMNS", "V1_PROJECT_COLUMNS", "StoreBase"]
