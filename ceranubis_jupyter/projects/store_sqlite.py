"""The project store in a SQLite file: the embedded default back end.

:class:`SQLiteStore` runs the shared SQL of :class:`~ceranubis_jupyter.store.Store` on a
file at ``$CERANUBIS_STORE`` or :func:`~ceranubis_jupyter.store.default_store_path`; this
module supplies the connection (WAL mode, so readers in other processes never wait for
the writer; mode 0600 in a 0700 directory), the DDL, the error mapping, and the bulk
writes sized to SQLite's parameter limit. ``store.open_store`` imports it when it opens
such a store; ``store_pg.py`` is the PostgreSQL counterpart.
"""

from __future__ import annotations

import functools
import itertools
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StoreError
from .queue_store import SQLITE_QUEUE
from .spares import Spares
from .store import DONE_VALUES, Store

# Seconds a writer waits for another process's write lock: long enough to ride out a
# burst of other writers, short enough that a stuck store is reported.
SQLITE_BUSY_TIMEOUT = 10.0
# Attempts (and the first pause, growing linearly) at switching a new store to WAL while
# other processes open it too.
WAL_ATTEMPTS = 20
WAL_RETRY_SECONDS = 0.05

# Parameters SQLite takes in one statement (999 before 3.32).
_SQLITE_PARAMS = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
# Rows per multi-row statement (2 parameters per inserted row, 6 per updated one), at most.
# A few hundred: with more, SQLite costs more per row, not less (measured on 3.40, with the
# statement compiled: 4.2 us per inserted row at 4000 rows, 2.0 us at 256 to 1024), and
# compiling grows faster than the text (an UPDATE of 2048 rows: 12 ms, of 256: 1.2 ms).
# A shorter batch is padded to the next power of two: the few statement sizes stay
# compiled in the driver's cache (a new size per flush cost SQLite a fifth of the write).
_INSERT_ROWS = 512 if _SQLITE_PARAMS >= 2 + 2 * 512 else 256
_UPDATE_ROWS = 256 if _SQLITE_PARAMS >= DONE_VALUES * 256 else 128
# Python's sqlite3 binds int, float, str and bytearray directly, but looks up an adapter
# for bytes and None (a failed attribute lookup: ~0.5 us each, a quarter of a row's
# write). So BLOBs are bound as bytearrays (a copy costs less), and padding rows are
# integers that match no argument (ids start at 1) and that inserts skip (position -1).
_PADDING = 0
_SKIPPED_POSITION = -1
# A new project's arguments get the ids first + position, chosen under the write lock
# above every id ever used (AUTOINCREMENT's own rule), so they need no reading back.
_NEXT_ARGUMENT_ID = (
    "SELECT MAX(n) FROM (SELECT seq AS n FROM sqlite_sequence WHERE name = 'arguments' "
    "UNION ALL SELECT MAX(id) FROM arguments)"
)
_INSERT_ARGUMENTS = (
    "INSERT INTO arguments (id, project, position, args) "
    "SELECT column1 + ?, ?, column1, column2 FROM (VALUES "
)
_INSERT_ARGUMENTS_WHERE = ") WHERE column1 >= 0"
# Finished arguments that printed nothing, many per statement (see _update_sql).
_UPDATE_DONE = (
    "UPDATE arguments SET state = 'done', result = v.column2, host = v.column3, "
    "attempts = v.column4, started = v.column5, finished = v.column6 FROM ("
)
_UPDATE_DONE_WHERE = (
    ") AS v WHERE arguments.id = v.column1 AND arguments.state IN ('pending', 'running')"
)

# The state's CHECK is a chain of ORs, not ``state IN (...)``: SQLite 3.40 builds a
# temporary index of an IN list for every row it checks, which cost 0.8 us per argument
# inserted and as much per result recorded (measured). Stores made before keep their
# IN list: the same rule, checked more slowly.
_PROJECTS_TABLE = """CREATE TABLE IF NOT EXISTS {table} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        code TEXT NOT NULL,
        target TEXT NOT NULL,
        created REAL NOT NULL,
        hosts TEXT NOT NULL,
        state TEXT NOT NULL,
        client TEXT NOT NULL DEFAULT '',
        heartbeat REAL NOT NULL DEFAULT 0,
        function BLOB,
        version INTEGER NOT NULL DEFAULT 1,
        code_hash TEXT NOT NULL DEFAULT '',
        args_hash TEXT NOT NULL DEFAULT '',
        changes TEXT NOT NULL DEFAULT '',
        UNIQUE (name, version))"""
# A store made before versions had UNIQUE (name), which SQLite cannot drop: the projects
# table is copied into one of the new shape (foreign keys are not enforced yet while the
# store opens, so the arguments stay as they are).
_V1_COLUMNS = "id, name, code, target, created, hosts, state, client, heartbeat, function"
_UPGRADE_PROJECTS = (
    _PROJECTS_TABLE.format(table="projects_versioned"),
    f"INSERT INTO projects_versioned ({_V1_COLUMNS}) SELECT {_V1_COLUMNS} FROM projects",
    "DROP TABLE projects",
    "ALTER TABLE projects_versioned RENAME TO projects",
)

_SQLITE_DDL = (
    _PROJECTS_TABLE.format(table="projects"),
    """CREATE TABLE IF NOT EXISTS arguments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        args BLOB NOT NULL,
        result BLOB,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state = 'pending' OR state = 'running' OR state = 'done'
                OR state = 'failed' OR state = 'cancelled'),
        host TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        started REAL,
        finished REAL,
        error TEXT,
        output TEXT,
        result_of INTEGER)""",
    # A project's arguments in id order: every per-project read, and a queue claim.
    "CREATE INDEX IF NOT EXISTS arguments_claim ON arguments (project, id)",
)


class SQLiteStore(Store):
    """The store in a SQLite file (WAL mode; created 0600 in a 0700 directory)."""

    _ddl = _SQLITE_DDL
    _begin_sql = "BEGIN IMMEDIATE"
    _queue = SQLITE_QUEUE

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        keeper: Spares[sqlite3.Connection] | None = None,
    ) -> None:
        super().__init__()
        self._create = create
        self.path = Path(path).expanduser()
        self.url = str(self.path)
        spare = self._take_spare(keeper)
        if spare is not None:  # its first store prepared the file and the schema
            self._connection: sqlite3.Connection = spare
            return
        _prepare_file(self.path)
        try:
            self._connection = sqlite3.connect(
                self.path,
                timeout=SQLITE_BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise self._translate(error) from error
        try:
            self._ensure_wal()
            self._read("PRAGMA synchronous = NORMAL")  # WAL: safe against process crashes
            self.prepare_schema(create)  # before foreign keys: an upgrade copies the projects
            self._read("PRAGMA foreign_keys = ON")
        except BaseException:
            self._connection.close()
            raise

    def _cursor(self) -> Any:
        return self._connection.cursor()

    def _ensure_wal(self) -> None:
        """Switch to WAL once; setting it while another process opens the store can be
        refused as "locked" without SQLite's busy wait, so that case is retried."""
        for attempt in range(1, WAL_ATTEMPTS + 1):
            try:
                [(mode,)] = self._read("PRAGMA journal_mode")
                if str(mode).lower() != "wal":
                    self._read("PRAGMA journal_mode = WAL")
                return
            except StoreError as error:
                if "locked" not in str(error) or attempt == WAL_ATTEMPTS:
                    raise
                time.sleep(WAL_RETRY_SECONDS * attempt)

    def _columns(self, cursor: Any, table: str) -> set[str]:
        cursor.execute(f"PRAGMA table_info({table})")
        return {str(row[1]) for row in cursor.fetchall()}

    def _add_versions(self, cursor: Any) -> None:
        for statement in _UPGRADE_PROJECTS:
            cursor.execute(statement)

    def _rollback(self, cursor: Any) -> None:
        if self._connection.in_transaction:
            cursor.execute("ROLLBACK")

    def _detach(self) -> sqlite3.Connection:
        # A closed one stays: used after close(), the store raises as sqlite3 does.
        connection, self._connection = self._connection, _closed_connection()
        return connection

    @staticmethod
    def _reusable(connection: sqlite3.Connection) -> bool:
        try:
            return not connection.in_transaction
        except sqlite3.ProgrammingError:  # closed
            return False

    def reopen(self) -> SQLiteStore:
        """Another store on the same file, with a connection of its own: one that an
        earlier such store gave back when it closed, if any is fit (spares.py)."""
        return SQLiteStore(self.path, create=self._create, keeper=self._spares)

    def _translate(self, error: Exception) -> Exception:
        if isinstance(error, (StoreError, ConfigError)):
            return error
        if isinstance(error, sqlite3.IntegrityError) and "projects.name" in str(error):
            return ConfigError("a project with this name already exists; pick another name")
        if isinstance(error, sqlite3.DatabaseError) and "not a database" in str(error):
            return StoreError(
                f"the project store {self.url} is not a SQLite database (corrupt or another "
                "file); move it away or set CERANUBIS_STORE to another path"
            )
        if isinstance(error, sqlite3.Error):
            return StoreError(
                f"the project store {self.url} failed: {error}; check the file and its "
                "directory are readable and writable"
            )
        return error

    def _insert_arguments(
        self, cursor: Any, project_id: int, args: Sequence[bytes]
    ) -> Sequence[int]:
        """The ids are chosen here, so they need no reading back: the transaction holds the
        write lock (BEGIN IMMEDIATE), so no other process can take them meanwhile."""
        cursor.execute(_NEXT_ARGUMENT_ID)
        first = int(cursor.fetchone()[0] or 0) + 1
        for start in range(0, len(args), _INSERT_ROWS):
            batch = args[start : start + _INSERT_ROWS]
            params: list[Any] = [first, project_id]
            params += itertools.chain.from_iterable(enumerate(map(bytearray, batch), start))
            size = _padded(len(batch))
            params += [_SKIPPED_POSITION, _PADDING] * (size - len(batch))
            cursor.execute(_insert_sql(size), params)
        return range(first, first + len(args))

    def _update_done(self, cursor: Any, values: Sequence[Any]) -> int:
        """Many rows per ``UPDATE ... FROM (VALUES ...)``, padded (see _UPDATE_ROWS)."""
        changed = 0
        per_statement = _UPDATE_ROWS * DONE_VALUES
        for start in range(0, len(values), per_statement):
            params = list(values[start : start + per_statement])
            params[1::DONE_VALUES] = map(bytearray, params[1::DONE_VALUES])
            rows = len(params) // DONE_VALUES
            size = _padded(rows)
            params += [_PADDING] * (DONE_VALUES * (size - rows))
            cursor.execute(self._sql(_update_sql(size)), params)
            changed += int(cursor.rowcount)
        return changed


def _padded(rows: int) -> int:
    """The statement size for ``rows`` rows: the next power of two."""
    return 1 << (rows - 1).bit_length()


@functools.cache  # a few powers of two
def _insert_sql(rows: int) -> str:
    """The INSERT of a new project's arguments for ``rows`` rows of values."""
    return f"{_INSERT_ARGUMENTS}{', '.join(['(?, ?)'] * rows)}{_INSERT_ARGUMENTS_WHERE}"


@functools.cache  # a few powers of two
def _update_sql(rows: int) -> str:
    """The UPDATE of finished arguments for ``rows`` rows of values."""
    marks = "(" + ", ".join("?" * DONE_VALUES) + ")"
    return f"{_UPDATE_DONE} VALUES {', '.join([marks] * rows)}{_UPDATE_DONE_WHERE}"


@functools.cache  # one for every closed store
def _closed_connection() -> sqlite3.Connection:
    """A closed connection: what a closed store holds (any use raises)."""
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    connection.close()
    return connection


def _prepare_file(path: Path) -> None:
    """Create the directory (0700) and the file (0600) when they do not exist yet."""
    try:
        # exist_ok and O_CREAT without O_EXCL: several processes may open a new store at once
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.is_dir():
            raise StoreError(f"the project store {path} is a directory; give a file path")
        if not path.exists():
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        _tighten(path)
    except OSError as error:
        raise StoreError(
            f"cannot create the project store {path}: {error.strerror}; set "
            "CERANUBIS_STORE to a writable path"
        ) from error


def _tighten(path: Path) -> None:
    """Make a store file of ours (and its WAL and shared-memory files) 0600.

    SQLite creates ``-wal`` and ``-shm`` with the database file's mode, so a store made
    readable by others before (or by another tool) would leak every result through them.
    A file owned by another user is a deliberate share and is left as it is.
    """
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            info = name.stat()
        except FileNotFoundError:
            continue
        if info.st_uid == os.geteuid() and info.st_mode & 0o077:
            name.chmod(0o600)
