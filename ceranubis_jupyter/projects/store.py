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

Versions and reuse: a name is unique per ``version``; each project row keeps the digests
of its code and arguments (``digest.py``). An argument that reuses a finished result is
``done`` with ``result_of`` pointing at the row that holds it (no copy): reads take
``COALESCE(result, holder's result)``, and removing the holder's project first moves the
result to one row that reuses it (:meth:`Store.remove_project`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError
from .queue_store import QueueStore
from .records import (
    ArgumentRow,
    FollowedRow,
    HostStats,
    Outcome,
    ProjectRow,
    ProjectSummary,
    argument_row,
    project_row,
)
from .store_base import PROJECT_COLUMNS, StoreBase

ARGUMENT_STATES = ("pending", "running", "done", "failed", "cancelled")
UNFINISHED = ("pending", "running")

# An argument as read: a reused one's result is the row it points at (result_of).
_ARGUMENT_SELECT = (
    "SELECT a.id, a.position, a.args, COALESCE(a.result, h.result), a.state, a.host, "
    "a.attempts, a.started, a.finished, a.error, a.output, a.result_of IS NOT NULL "
    "FROM arguments a LEFT JOIN arguments h ON h.id = a.result_of"
)
_OPEN = "('pending', 'running')"
# Finished results of functions with one code digest: argument bytes, the row's id.
_REUSABLE = (
    "SELECT a.args, a.id FROM arguments a JOIN projects p ON p.id = a.project "
    "WHERE p.code_hash = ? AND a.state = 'done' AND a.result IS NOT NULL"
)
# A finished argument with a result and no printed output: the common case, batched.
# Values per argument in record_outcomes(done=...): id, result, host, attempts, started, finished.
DONE_VALUES = 6
_UPDATE_ANY = (
    "UPDATE arguments SET state = ?, result = ?, error = ?, host = ?, attempts = ?, "
    f"started = ?, finished = ?, output = ? WHERE id = ? AND state IN {_OPEN}"
)


class Store(QueueStore):
    """Projects and argument outcomes behind plain SQL; thread-safe (one lock).

    Back ends supply a DB-API connection, the DDL, the error mapping and the two bulk
    writes (a new project's arguments, finished outcomes) through :class:`StoreBase`;
    every other query is written once, here, with ``?`` placeholders.
    """

    _reusable_sql = _REUSABLE  # a back end may read the same rows another way

    @abstractmethod
    def reopen(self) -> Store:
        """Another store on the same file or database, with a connection of its own."""

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
        *,
        version: int = 1,
        digests: tuple[str, str] = ("", ""),
        changes: str = "",
        reused: Sequence[tuple[int, int]] = (),
        queued: tuple[int, str, float] | None = None,
    ) -> tuple[ProjectRow, Sequence[int]]:  # long: a documented signature of 12 parameters
        """Insert a project and its arguments (``pending``) in one transaction; returns
        its row and the arguments' ids in position order.

        ``started(row)`` is called inside the transaction, once the project's row is in
        (so its name is known to be free) and before its arguments are: a run may start
        then, as long as it writes nothing before this method returns. If it raises, or
        the rest of the insert fails, nothing is stored.

        ``version``, ``digests`` (of the code, of the arguments) and ``changes``: see
        :class:`ProjectRow`. ``reused``: ``(position, holder)`` of arguments that take
        the result of the argument ``holder`` (done at once, no copy of the result).

        Raises:
            ConfigError: a project with this name and version exists.
            StoreError: the store refused the write.
        """
        now = time.time()
        draft = ProjectRow(
            0, name, code, target, now, hosts, "running", client, now, function, version,
            *digests, changes,
        )  # fmt: skip
        try:
            if queued is not None and started is None and not reused:
                at_once = self.insert_queued_at_once(draft, args, queued)
                if at_once is not None:
                    return dataclasses.replace(draft, id=at_once[0]), at_once[1]
            with self._transaction() as cursor:
                row = dataclasses.replace(draft, id=self._insert_project(cursor, draft))
                if started is not None:
                    started(row)
                ids = self._insert_arguments(cursor, row.id, args)
                if reused:
                    self._mark_reused(cursor, [(ids[at], holder) for at, holder in reused])
                if queued is not None:
                    self.queue_project(cursor, row.id, *queued)
        except ConfigError:
            raise ConfigError(
                f"a project named {name!r} (version {version}) already exists; pick another "
                f"name or remove it with `ceranubis rm {name}`"
            ) from None
        return row, ids

    def insert_queued_at_once(
        self, row: ProjectRow, args: Sequence[bytes], queued: tuple[int, str, float]
    ) -> tuple[int, list[int]] | None:
        """A queued project stored in one statement (PostgreSQL: ``queue_fast.py``):
        ``(its id, its arguments' ids)``; ``None``: this back end stores it in steps."""
        return None

    def _insert_project(self, cursor: Any, row: ProjectRow) -> int:
        """Insert a project's row (its ``id`` is ignored) in the open transaction; returns
        the id it got."""
        cursor.execute(
            self._sql(
                f"INSERT INTO projects ({PROJECT_COLUMNS.removeprefix('id, ')}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
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
                row.version,
                row.code_hash,
                row.args_hash,
                row.changes,
            ),
        )
        return int(cursor.fetchone()[0])

    def _mark_reused(self, cursor: Any, pairs: Sequence[tuple[int, int]]) -> None:
        """Make each ``(arg_id, holder)`` done with the result of ``holder``, where still
        pending (in the open transaction)."""
        cursor.executemany(
            self._sql(
                "UPDATE arguments SET state = 'done', result_of = ? "
                "WHERE id = ? AND state = 'pending'"
            ),
            [(holder, arg_id) for arg_id, holder in pairs],
        )

    def reuse(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Make each ``(arg_id, holder)`` done with the result of ``holder`` (see
        :meth:`reusable`), where still pending."""
        if pairs:
            with self._transaction() as cursor:
                self._mark_reused(cursor, pairs)

    def reusable(self, code_hash: str) -> dict[bytes, int]:
        """Finished results of functions with this code digest: argument bytes → the id
        of the argument row that holds the result (one per distinct argument)."""
        rows = self._reads_by_index([(self._reusable_sql, (code_hash,))])[0]
        return {bytes(args): int(arg_id) for args, arg_id in rows}

    def reused_count(self, project_id: int) -> int:
        """How many of the project's arguments took another argument's result."""
        rows = self._read(
            "SELECT COUNT(*) FROM arguments WHERE project = ? AND result_of IS NOT NULL",
            (project_id,),
        )
        return int(rows[0][0])

    def find_project(self, name_or_id: str | int, version: int | None = None) -> ProjectRow | None:
        """The project with this id (an int or a string of digits), or this name: its
        ``version``, by default the latest."""
        params: tuple[str | int, ...]
        if isinstance(name_or_id, int) or name_or_id.isdigit():
            sql, params = "WHERE id = ?", (int(name_or_id),)
        elif version is None:
            sql, params = "WHERE name = ? ORDER BY version DESC LIMIT 1", (name_or_id,)
        else:
            sql, params = "WHERE name = ? AND version = ?", (name_or_id, version)
        rows = self._read(f"SELECT {PROJECT_COLUMNS} FROM projects {sql}", params)
        return project_row(rows[0]) if rows else None

    def versions(self, name: str) -> list[int]:
        """Ids of every version of the project ``name``, oldest first."""
        rows = self._read("SELECT id FROM projects WHERE name = ? ORDER BY version", (name,))
        return [int(row[0]) for row in rows]

    def names_starting(self, prefix: str) -> set[str]:
        """Names of projects that start with ``prefix`` (to pick a fresh default name)."""
        return {row[0] for row in self._read(*_names_starting(prefix))}

    def names_and_reusable(self, prefix: str, code_hash: str) -> tuple[set[str], dict[bytes, int]]:
        """:meth:`names_starting` and :meth:`reusable` (``{}`` without ``code_hash``) in
        one round trip, for a new project's commit."""
        if not code_hash:
            return self.names_starting(prefix), {}
        names, known = self._reads_by_index(
            [_names_starting(prefix), (self._reusable_sql, (code_hash,))]
        )
        return {row[0] for row in names}, {bytes(args): int(arg_id) for args, arg_id in known}

    def list_projects(self, *, every_version: bool = False) -> list[ProjectSummary]:
        """Projects, oldest first, with their done and total counts: the latest version
        of each name, or ``every_version``."""
        latest = (
            ""
            if every_version
            else "WHERE p.version = (SELECT MAX(q.version) FROM projects q WHERE q.name = p.name) "
        )
        rows = self._read(
            f"SELECT {PROJECT_COLUMNS}, "
            "(SELECT COUNT(*) FROM arguments a WHERE a.project = p.id AND a.state = 'done'), "
            "(SELECT COUNT(*) FROM arguments a WHERE a.project = p.id) "
            f"FROM projects p {latest}ORDER BY p.created, p.id"
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
                    project.version,
                )
            )
        return summaries

    def remove_project(self, project_id: int) -> None:
        """Delete a project and its arguments. Results that other projects reuse stay:
        each moves to one of the rows reusing it, which the others then point at."""
        with self._transaction() as cursor:
            self.pause_claims(cursor, project_id)
            cursor.execute(
                self._sql(
                    "SELECT r.result_of, MIN(r.id) FROM arguments r WHERE r.result_of IN "
                    "(SELECT id FROM arguments WHERE project = ?) AND r.project <> ? "
                    "GROUP BY r.result_of"
                ),
                (project_id, project_id),
            )
            heirs = [(int(holder), int(heir)) for holder, heir in cursor.fetchall()]
            if heirs:
                self._hand_down(cursor, heirs)
            cursor.execute(self._sql("DELETE FROM arguments WHERE project = ?"), (project_id,))
            cursor.execute(self._sql("DELETE FROM projects WHERE id = ?"), (project_id,))

    def _hand_down(self, cursor: Any, heirs: Sequence[tuple[int, int]]) -> None:
        """Move each ``holder``'s result to its ``heir`` (which keeps pointing at itself,
        so it still counts as reused); the other rows reusing it point at the heir."""
        cursor.executemany(
            self._sql(
                "UPDATE arguments SET result = (SELECT h.result FROM arguments h WHERE h.id = ?), "
                "result_of = id WHERE id = ?"
            ),
            heirs,
        )
        cursor.executemany(
            self._sql("UPDATE arguments SET result_of = ? WHERE result_of = ? AND id <> ?"),
            [(heir, holder, heir) for holder, heir in heirs],
        )

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
        sql = f"{_ARGUMENT_SELECT} WHERE a.project = ? AND a.state IN ({marks})"
        if newest is None:
            return [
                argument_row(r)
                for r in self._read(sql + " ORDER BY a.position", (project_id, *states))
            ]
        rows = self._read(
            sql + " ORDER BY a.finished DESC NULLS LAST, a.id DESC LIMIT ?",
            (project_id, *states, newest),
        )
        return [argument_row(r) for r in reversed(rows)]

    def arguments_from(self, project_id: int, first_id: int, count: int) -> list[FollowedRow]:
        """Up to ``count`` arguments (any state) from id ``first_id`` on, in id order (the
        order they were committed in), with only what a reader that follows a run needs
        (``ceranubis run -o``): a few columns, no row objects (1M rows in ~1 s)."""
        rows = self._read(
            "SELECT a.id, a.state, a.args, COALESCE(a.result, h.result), a.error "
            "FROM arguments a LEFT JOIN arguments h ON h.id = a.result_of "
            "WHERE a.project = ? AND a.id >= ? ORDER BY a.id LIMIT ?",
            (project_id, first_id, count),
        )
        return [FollowedRow(*row) for row in rows]

    def argument_blobs(self, project_id: int) -> list[bytes]:
        """The project's arguments as stored, in position order (no results read)."""
        rows = self._read(
            "SELECT args FROM arguments WHERE project = ? ORDER BY position", (project_id,)
        )
        return [bytes(row[0]) for row in rows]

    def last_outputs(self, project_id: int, count: int) -> list[ArgumentRow]:
        """The ``count`` most recently finished arguments that printed something."""
        rows = self._read(
            f"{_ARGUMENT_SELECT} WHERE a.project = ? AND a.output <> '' "
            "ORDER BY a.finished DESC, a.id DESC LIMIT ?",
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
        with self._transaction() as cursor:
            self.pause_claims(cursor, project_id)
            sql = f"UPDATE arguments SET state = 'cancelled' WHERE project = ? AND state IN {_OPEN}"
            cursor.execute(self._sql(sql), (project_id,))
            return int(cursor.rowcount)


def _names_starting(prefix: str) -> tuple[str, tuple[str]]:
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return "SELECT name FROM projects WHERE name LIKE ? ESCAPE '\\'", (pattern,)


def _plain_done(outcome: Outcome) -> bool:
    """A result that printed nothing, with its timing: the batched UPDATE's case."""
    return (
        outcome.state == "done"
        and outcome.error is None
        and not outcome.output
        and outcome.started is not None
    )


__all__ = ["ARGUMENT_STATES", "DONE_VALUES", "UNFINISHED", "Store", "StoreBase"]
