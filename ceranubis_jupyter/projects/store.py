"""The project store: projects and the outcome of each of their arguments, kept on disk.

One interface, :class:`Store`, over plain SQL; two back ends:

- :class:`SQLiteStore` (``store_sqlite.py``, the embedded default): a file at
  ``$CERANUBIS_STORE`` or ``$XDG_DATA_HOME/ceranubis/projects.sqlite``
  (``~/.local/share/...``), in WAL mode so readers in other processes never wait for the
  writer; mode 0600 in a 0700 directory.
- ``PostgresStore`` (``store_pg.py``): a ``postgresql://`` URL, shared by several users
  and machines. psycopg is imported only then.

How data flows: ``project.py`` adds a project in one transaction (its row and one row
per argument, state ``pending``; its run starts submitting once the row is in, and writes
only after the commit); its writer thread marks arguments ``running`` (those in flight for
a flush period) and records outcomes in batches (``record_outcomes``), each ``UPDATE`` guarded
by the argument's state so a result is recorded exactly once even when a task ran twice;
any process reads counts and results at any time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConfigError, StoreError
from .records import (
    ArgumentRow,
    HostStats,
    Outcome,
    ProjectRow,
    ProjectSummary,
    argument_row,
    project_row,
)

ARGUMENT_STATES = ("pending", "running", "done", "failed", "cancelled")
UNFINISHED = ("pending", "running")

_PROJECT_COLUMNS = "id, name, code, target, created, hosts, state, client, heartbeat, function"
_ARGUMENT_COLUMNS = (
    "id, position, args, result, state, host, attempts, started, finished, error, output"
)
_OPEN = "('pending', 'running')"
# A finished argument with a result and no printed output: the common case, batched.
# Values per argument in record_outcomes(done=...): id, result, host, attempts, started, finished.
DONE_VALUES = 6
_UPDATE_ANY = (
    "UPDATE arguments SET state = ?, result = ?, error = ?, host = ?, attempts = ?, "
    f"started = ?, finished = ?, output = ? WHERE id = ? AND state IN {_OPEN}"
)


class Store(ABC):
    """Projects and argument outcomes behind plain SQL; thread-safe (one lock).

    Back ends supply a DB-API connection, the DDL, the error mapping and the two bulk
    writes (a new project's arguments, finished outcomes); every other query is written
    once, here, with ``?`` placeholders.
    """

    url: str
    _ddl: Sequence[str]
    # How a write transaction starts (SQLite takes its write lock at once: no upgrades).
    _begin_sql = "BEGIN"

    def __init__(self) -> None:
        self._lock = threading.RLock()

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

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    @abstractmethod
    def reopen(self) -> Store:
        """Another store on the same file or database, with a connection of its own."""

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
        with self._transaction() as cursor:
            for statement in self._ddl:
                cursor.execute(statement)
        self._check_schema()

    def _check_schema(self) -> None:
        try:
            self._read(f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE 1 = 0")
            self._read(f"SELECT {_ARGUMENT_COLUMNS}, project FROM arguments WHERE 1 = 0")
        except StoreError as error:
            raise StoreError(
                f"the project store {self.url} has tables of another shape ({error}); "
                "point CERANUBIS_STORE at a new file or database"
            ) from error

    # ------------------------------------------------------------------ projects

    def add_project(
        self,
        name: str,
        code: str,
        target: str,
        hosts: list[str],
        function: bytes | None,
        args: Sequence[bytes],
        client: str,
        started: Callable[[ProjectRow], None] | None = None,
    ) -> tuple[ProjectRow, Sequence[int]]:
        """Insert a project and its arguments (``pending``) in one transaction; returns
        its row and the arguments' ids in position order.

        ``started(row)`` is called inside the transaction, once the project's row is in
        (so its name is known to be free) and before its arguments are: a run may start
        then, as long as it writes nothing before this method returns. If it raises, or
        the rest of the insert fails, nothing is stored.

        Raises:
            ConfigError: a project with this name exists.
            StoreError: the store refused the write.
        """
        now = time.time()
        draft = ProjectRow(0, name, code, target, now, hosts, "running", client, now, function)
        try:
            with self._transaction() as cursor:
                row = dataclasses.replace(draft, id=self._insert_project(cursor, draft))
                if started is not None:
                    started(row)
                ids = self._insert_arguments(cursor, row.id, args)
        except ConfigError:
            raise ConfigError(
                f"a project named {name!r} already exists; pick another name or remove it "
                f"with `ceranubis rm {name}`"
            ) from None
        return row, ids

    def _insert_project(self, cursor: Any, row: ProjectRow) -> int:
        """Insert a project's row (its ``id`` is ignored) in the open transaction; returns
        the id it got."""
        cursor.execute(
            self._sql(
                "INSERT INTO projects (name, code, target, created, hosts, state, client, "
                "heartbeat, function) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
            ),
            (
                row.name,
                row.code,
                row.target,
                row.created,
                json.dumps(row.hosts),
                row.state,
                row.client,
                row.heartbeat,
                row.function,
            ),
        )
        return int(cursor.fetchone()[0])

    def find_project(self, name_or_id: str | int) -> ProjectRow | None:
        """The project with this name, or this id (an int or a string of digits)."""
        if isinstance(name_or_id, int) or name_or_id.isdigit():
            rows = self._read(
                f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = ?", (int(name_or_id),)
            )
        else:
            rows = self._read(
                f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE name = ?", (name_or_id,)
            )
        return project_row(rows[0]) if rows else None

    def names_starting(self, prefix: str) -> set[str]:
        """Names of projects that start with ``prefix`` (to pick a fresh default name)."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._read("SELECT name FROM projects WHERE name LIKE ? ESCAPE '\\'", (pattern,))
        return {row[0] for row in rows}

    def list_projects(self) -> list[ProjectSummary]:
        """Every project, oldest first, with its done and total counts."""
        rows = self._read(
            f"SELECT {_PROJECT_COLUMNS}, "
            "(SELECT COUNT(*) FROM arguments a WHERE a.project = p.id AND a.state = 'done'), "
            "(SELECT COUNT(*) FROM arguments a WHERE a.project = p.id) "
            "FROM projects p ORDER BY p.id"
        )
        summaries = []
        for *columns, done, total in rows:
            project = project_row(columns)
            summaries.append(
                ProjectSummary(
                    project.name,
                    project.id,
                    project.created,
                    project.effective_state,
                    int(done),
                    int(total),
                )
            )
        return summaries

    def remove_project(self, project_id: int) -> None:
        """Delete a project and its arguments."""
        with self._transaction() as cursor:
            cursor.execute(self._sql("DELETE FROM arguments WHERE project = ?"), (project_id,))
            cursor.execute(self._sql("DELETE FROM projects WHERE id = ?"), (project_id,))

    def set_state(self, project_id: int, state: str, *, release: bool = False) -> None:
        """Set a project's state; ``release`` also forgets its client."""
        if release:
            self._write(
                "UPDATE projects SET state = ?, client = '' WHERE id = ?", [(state, project_id)]
            )
        else:
            self._write("UPDATE projects SET state = ? WHERE id = ?", [(state, project_id)])

    def set_hosts(self, project_id: int, hosts: list[str]) -> None:
        """Record the hosts a project runs on now."""
        self._write("UPDATE projects SET hosts = ? WHERE id = ?", [(json.dumps(hosts), project_id)])

    def claim(self, row: ProjectRow, client: str) -> bool:
        """Become the project's client, unless another claimed it since ``row`` was read."""
        changed = self._write(
            "UPDATE projects SET client = ?, heartbeat = ?, state = 'running' "
            "WHERE id = ? AND client = ? AND heartbeat = ?",
            [(client, time.time(), row.id, row.client, row.heartbeat)],
        )
        return changed == 1

    def heartbeat(self, project_id: int, client: str) -> str | None:
        """Say ``client`` still runs the project; returns its state, ``None`` if not ours."""
        with self._transaction() as cursor:
            cursor.execute(
                self._sql(
                    "UPDATE projects SET heartbeat = ? WHERE id = ? AND client = ? RETURNING state"
                ),
                (time.time(), project_id, client),
            )
            row = cursor.fetchone()
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------ arguments

    def counts(self, project_id: int) -> dict[str, int]:
        """Arguments per state (every state present, zeros included)."""
        rows = self._read(
            "SELECT state, COUNT(*) FROM arguments WHERE project = ? GROUP BY state", (project_id,)
        )
        counts = dict.fromkeys(ARGUMENT_STATES, 0)
        counts.update({str(state): int(count) for state, count in rows})
        return counts

    def arguments(
        self, project_id: int, states: Sequence[str], *, newest: int | None = None
    ) -> list[ArgumentRow]:
        """Arguments in ``states``: all in submission order, or the ``newest`` finished."""
        marks = ", ".join("?" * len(states))
        sql = f"SELECT {_ARGUMENT_COLUMNS} FROM arguments WHERE project = ? AND state IN ({marks})"
        if newest is None:
            return [
                argument_row(r)
                for r in self._read(sql + " ORDER BY position", (project_id, *states))
            ]
        rows = self._read(
            sql + " ORDER BY finished DESC, id DESC LIMIT ?", (project_id, *states, newest)
        )
        return [argument_row(r) for r in reversed(rows)]

    def last_outputs(self, project_id: int, count: int) -> list[ArgumentRow]:
        """The ``count`` most recently finished arguments that printed something."""
        rows = self._read(
            f"SELECT {_ARGUMENT_COLUMNS} FROM arguments WHERE project = ? AND output <> '' "
            "ORDER BY finished DESC, id DESC LIMIT ?",
            (project_id, count),
        )
        return [argument_row(r) for r in reversed(rows)]

    def host_stats(self, project_id: int) -> list[HostStats]:
        """Per host: finished arguments, mean run time, first start, last finish."""
        rows = self._read(
            "SELECT host, COUNT(*), AVG(finished - started), MIN(started), MAX(finished) "
            "FROM arguments WHERE project = ? AND state IN ('done', 'failed') "
            "AND host IS NOT NULL GROUP BY host ORDER BY host",
            (project_id,),
        )
        return [
            HostStats(str(h), int(n), float(m or 0), float(s or 0), float(f or 0))
            for h, n, m, s, f in rows
        ]

    def mark_running(self, rows: Sequence[tuple[int, str, float]]) -> int:
        """Mark ``(arg_id, host, started)`` as running, where still pending."""
        return self._write(
            "UPDATE arguments SET state = 'running', host = ?, started = ? "
            "WHERE id = ? AND state = 'pending'",
            [(host, started, arg_id) for arg_id, host, started in rows],
        )

    def record_outcomes(self, outcomes: Sequence[Outcome], done: Sequence[Any] = ()) -> int:
        """Record outcomes in one transaction; returns how many were new.

        Only arguments still pending or running change, so an outcome arriving twice (a
        task that ran again after a re-queue, or two clients) is recorded once. ``done``
        is the writer's hot path: one flat run of ``id, result, host, attempts, started,
        finished`` (:data:`DONE_VALUES` per argument) for arguments that finished without
        printing (no object per argument); such outcomes in ``outcomes`` join it.
        """
        plain = list(done)
        other = []
        for outcome in outcomes:
            if _plain_done(outcome):
                plain += (
                    outcome.arg_id,
                    outcome.result,
                    outcome.host,
                    outcome.attempts,
                    outcome.started,
                    outcome.finished,
                )
            else:
                other.append(outcome.row())
        if not plain and not other:
            return 0
        with self._transaction() as cursor:
            changed = self._update_done(cursor, plain) if plain else 0
            if other:
                cursor.executemany(self._sql(_UPDATE_ANY), other)
                changed += int(cursor.rowcount)
        return changed

    def reset_unfinished(self, project_id: int) -> int:
        """Put every argument without a result back to pending (before a resume)."""
        return self._write(
            "UPDATE arguments SET state = 'pending', error = NULL, result = NULL "
            "WHERE project = ? AND state <> 'done'",
            [(project_id,)],
        )

    def cancel_unfinished(self, project_id: int) -> int:
        """Mark every pending or running argument cancelled."""
        return self._write(
            f"UPDATE arguments SET state = 'cancelled' WHERE project = ? AND state IN {_OPEN}",
            [(project_id,)],
        )


def _plain_done(outcome: Outcome) -> bool:
    """A result that printed nothing, with its timing: the batched UPDATE's case."""
    return (
        outcome.state == "done"
        and outcome.error is None
        and not outcome.output
        and outcome.started is not None
    )


# ---------------------------------------------------------------------- opening


__all__ = ["ARGUMENT_STATES", "DONE_VALUES", "UNFINISHED", "Store"]
